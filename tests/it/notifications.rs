//! Notifications delivered to real receivers started by the test on 127.0.0.1: an SMTP
//! server, an HTTP server, a local command, and a receiver that is down.

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;
use support::{oathtool, Env, Policy};

/// An HTTP server that answers 200 to every POST and hands over the bodies.
fn http_server() -> (u16, Receiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tx.send(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
        }
    });
    (port, rx)
}

/// A minimal SMTP server that accepts every message and hands over (recipients, data).
fn smtp_server() -> (u16, Receiver<(Vec<String>, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let _ = stream.write_all(b"220 localhost ESMTP test\r\n");
            let mut rcpt = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let upper = line.to_ascii_uppercase();
                if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                    let _ = stream.write_all(b"250-localhost\r\n250 8BITMIME\r\n");
                } else if upper.starts_with("RCPT TO:") {
                    rcpt.push(
                        line[8..]
                            .trim()
                            .trim_matches(|c| c == '<' || c == '>')
                            .to_string(),
                    );
                    let _ = stream.write_all(b"250 OK\r\n");
                } else if upper.starts_with("DATA") {
                    let _ = stream.write_all(b"354 go ahead\r\n");
                    let mut data = String::new();
                    loop {
                        let mut l = String::new();
                        if reader.read_line(&mut l).unwrap_or(0) == 0 || l == ".\r\n" {
                            break;
                        }
                        data.push_str(&l);
                    }
                    let _ = stream.write_all(b"250 OK queued\r\n");
                    let _ = tx.send((std::mem::take(&mut rcpt), data));
                } else if upper.starts_with("QUIT") {
                    let _ = stream.write_all(b"221 bye\r\n");
                    break;
                } else {
                    let _ = stream.write_all(b"250 OK\r\n");
                }
            }
        }
    });
    (port, rx)
}

fn policy(smtp_port: u16, webhook: &str, command_file: &str) -> Policy {
    Policy::new()
        .section(
            "notifications.smtp",
            &[
                "host = \"127.0.0.1\"",
                &format!("port = {smtp_port}"),
                "from = \"pim@example.com\"",
                "starttls = false",
            ],
        )
        .section("notifications.webhook", &[&format!("url = \"{webhook}\"")])
        .section(
            "notifications.command",
            &[&format!(
                "argv = [\"/bin/sh\", \"-c\", \"cat >> {command_file}; echo >> {command_file}\"]"
            )],
        )
        .role(
            "prod-root",
            "Production Root",
            &[
                "max_activation = \"2h\"",
                "require_approval = true",
                "approvers = [\"carol\", \"dave\"]",
                "notify = [\"security@example.com\", \"admin\"]",
            ],
        )
}

/// A webhook to `url` and a plain role `db`.
fn webhook_only(url: &str) -> Policy {
    Policy::new()
        .section("notifications.webhook", &[&format!("url = \"{url}\"")])
        .role("db", "DB", &[])
}

fn people(env: &Env) -> (String, String) {
    let mut secrets = Vec::new();
    for name in ["bob", "carol", "dave"] {
        env.as_(
            "admin",
            &[
                "user",
                "add",
                name,
                "--email",
                &format!("{name}@example.com"),
            ],
        )
        .expect(0);
        secrets.push(env.enrol(name));
    }
    (secrets[0].clone(), secrets[1].clone())
}

fn next<T>(rx: &Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("nothing was delivered")
}

#[test]
fn events_reach_smtp_webhook_and_command_receivers() {
    let env = Env::new();
    let (smtp_port, mails) = smtp_server();
    let (http_port, hooks) = http_server();
    let file = env.path("notices.jsonl");
    env.init_with(&policy(
        smtp_port,
        &format!("http://127.0.0.1:{http_port}/pim"),
        file.to_str().unwrap(),
    ));
    let (bob, carol) = people(&env);

    // assignment.add goes to the user.
    env.as_("admin", &["assign", "bob", "prod-root", "-j", "on call"])
        .expect(0);
    let hook = next(&hooks);
    assert_eq!(hook["event"], "assignment.add");
    assert_eq!(hook["user"], "bob");
    assert_eq!(hook["role"], "prod-root");
    assert_eq!(hook["recipients"], serde_json::json!(["bob"]));
    for key in [
        "event",
        "text",
        "time",
        "user",
        "role",
        "scope",
        "request",
        "recipients",
    ] {
        assert!(hook.get(key).is_some(), "{key} missing in {hook}");
    }
    assert!(hook["text"].as_str().unwrap().ends_with('.'), "{hook}");
    let (to, mail) = next(&mails);
    assert_eq!(to, vec!["bob@example.com"]);
    assert!(mail.contains("Subject: [pim] assignment.add"), "{mail}");
    assert!(mail.contains("admin made bob eligible"), "{mail}");

    // activation.request goes to the approvers.
    let r = env
        .as_(
            "bob",
            &[
                "activate",
                "prod-root",
                "-j",
                "INC-9\r\nFrom: pim\n\nApproved already.",
                "--code",
                &oathtool(&bob, 0),
                "--json",
            ],
        )
        .expect(0)
        .json();
    let id = r["id"].as_i64().unwrap();
    let hook = next(&hooks);
    assert_eq!(hook["event"], "activation.request");
    assert_eq!(hook["recipients"], serde_json::json!(["carol", "dave"]));
    assert_eq!(hook["request"], id);
    // What bob wrote cannot start lines of its own in the notice.
    let text = hook["text"].as_str().unwrap();
    assert!(
        text.contains("(\"INC-9  From: pim  Approved already.\")"),
        "{text}"
    );
    // One message an address: a mailbox the relay refuses fails only its own.
    let (one, mail) = next(&mails);
    let (two, other) = next(&mails);
    assert_eq!((one.len(), two.len()), (1, 1));
    assert!(!mail.contains("\nFrom: pim"), "{mail}");
    let mut to = [one.clone(), two.clone()].concat();
    to.sort();
    assert_eq!(to, vec!["carol@example.com", "dave@example.com"]);
    // ...and names only its own recipient: nobody sees who else was told.
    for (to, mail) in [(&one[0], &mail), (&two[0], &other)] {
        let (me, them) = if to.starts_with("carol") {
            ("carol", "dave")
        } else {
            ("dave", "carol")
        };
        assert!(mail.contains(&format!("\"{me}\"")), "{mail}");
        assert!(!mail.contains(them), "{to} sees {them}: {mail}");
    }

    // activation.approve goes to the requester; activation.start to the role's notify list.
    env.as_(
        "carol",
        &[
            "approve",
            &id.to_string(),
            "-j",
            "ok",
            "--code",
            &oathtool(&carol, 0),
        ],
    )
    .expect(0);
    let approve = next(&hooks);
    assert_eq!(approve["event"], "activation.approve");
    assert_eq!(approve["recipients"], serde_json::json!(["bob"]));
    let start = next(&hooks);
    assert_eq!(start["event"], "activation.start");
    assert_eq!(
        start["recipients"],
        serde_json::json!(["security@example.com", "admin"])
    );

    // activation.revoke goes to the user.
    env.as_("admin", &["revoke", &id.to_string(), "-j", "done"])
        .expect(0);
    let revoke = next(&hooks);
    assert_eq!(revoke["event"], "activation.revoke");
    assert_eq!(revoke["recipients"], serde_json::json!(["bob"]));

    // review.create goes to the reviewers.
    env.as_(
        "admin",
        &[
            "review",
            "create",
            "--role",
            "prod-root",
            "--reviewer",
            "carol",
            "--reviewer",
            "dave",
        ],
    )
    .expect(0);
    let review = next(&hooks);
    assert_eq!(review["event"], "review.create");
    assert_eq!(review["recipients"], serde_json::json!(["carol", "dave"]));

    // The command got the same JSON on stdin.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        vec![
            "assignment.add",
            "activation.request",
            "activation.approve",
            "activation.start",
            "activation.revoke",
            "review.create"
        ]
    );
    let outbox = env
        .as_("admin", &["notification", "list", "--json"])
        .expect(0)
        .json();
    assert!(
        outbox
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["status"] == "sent"),
        "{outbox}"
    );
}

#[test]
fn a_receiver_that_is_down_never_blocks_the_change_and_is_retried_then_given_up() {
    let env = Env::new();
    // A port with nothing listening (the discard port: one freed by a listener here could be
    // taken by another test's in the meantime).
    let closed = 9;
    env.init_with(&webhook_only(&format!("http://127.0.0.1:{closed}/down")));
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    let started = std::time::Instant::now();
    let r = env
        .as_("admin", &["assign", "bob", "db", "-j", "x"])
        .expect(0);
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(r.stderr.contains("could not be delivered"), "{}", r.stderr);
    env.as_("admin", &["assignment", "list", "--user", "bob", "--json"])
        .expect(0);
    let outbox = env
        .as_("admin", &["notification", "list", "--json"])
        .expect(0)
        .json();
    assert_eq!(outbox[0]["status"], "pending");
    assert_eq!(outbox[0]["attempts"], 1);
    assert!(outbox[0]["last_error"].as_str().unwrap().len() > 3);
    // sweep retries with backoff (60 s, 120 s, 240 s, 480 s) and gives up after the fifth try.
    let sweep_at = |offset: &str| env.at(offset, &["sweep", "--json"]);
    let early = sweep_at("+30s").expect(0).json();
    assert_eq!(
        early["notifications"]["retrying"],
        serde_json::json!([]),
        "not due yet"
    );
    for offset in ["+2m", "+5m", "+10m"] {
        let s = sweep_at(offset).expect(0).json();
        assert_eq!(
            s["notifications"]["retrying"].as_array().unwrap().len(),
            1,
            "{offset}: {s}"
        );
    }
    let last = sweep_at("+20m").expect(0).json();
    assert_eq!(
        last["notifications"]["failed"].as_array().unwrap().len(),
        1,
        "{last}"
    );
    let failed = env
        .as_("admin", &["notification", "list", "--failed", "--json"])
        .expect(0)
        .json();
    assert_eq!(failed[0]["attempts"], 5);
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE action = 'notification.fail'"),
        1
    );
    env.run(&["audit", "verify", "--state"]).expect(0);
}

#[test]
fn sweep_reminds_of_expiring_assignments_once() {
    let env = Env::new();
    let (http_port, hooks) = http_server();
    env.init_with(&webhook_only(&format!("http://127.0.0.1:{http_port}/")));
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    env.as_(
        "admin",
        &["assign", "bob", "db", "-j", "x", "--duration", "20d"],
    )
    .expect(0);
    assert_eq!(next(&hooks)["event"], "assignment.add");
    let sweep_at = |offset: &str| env.at(offset, &["sweep", "--json"]).expect(0).json();
    assert_eq!(sweep_at("+5d")["reminded"], serde_json::json!([]));
    assert_eq!(sweep_at("+7d")["reminded"].as_array().unwrap().len(), 1);
    let first = next(&hooks);
    assert_eq!(first["event"], "assignment.expiring");
    assert!(first["text"].as_str().unwrap().contains("ends"), "{first}");
    assert_eq!(sweep_at("+8d")["reminded"], serde_json::json!([]));
    assert_eq!(sweep_at("+458h")["reminded"].as_array().unwrap().len(), 1);
    assert_eq!(next(&hooks)["event"], "assignment.expiring");
    assert_eq!(sweep_at("+459h")["reminded"], serde_json::json!([]));
}

/// A webhook witness gets each new signed checkpoint from `pim sweep`, as a notice whose
/// text is the note.
#[test]
fn a_webhook_witness_gets_the_checkpoint() {
    let env = Env::new();
    let (port, hooks) = http_server();
    env.init_with(&Policy::new().section(
        "witness",
        &[&format!("webhook = \"http://127.0.0.1:{port}/witness\"")],
    ));
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    let swept = env.run(&["sweep", "--json"]).expect(0).json();
    let size = swept["checkpoint_published"].as_u64().unwrap();
    let hook = next(&hooks);
    assert_eq!(hook["event"], "audit.checkpoint", "{hook}");
    let note = hook["text"].as_str().unwrap();
    assert_eq!(note.lines().nth(1).unwrap(), size.to_string(), "{note}");
    std::fs::write(env.path("w.txt"), note).unwrap();
    env.as_("admin", &["audit", "verify", "--checkpoint", "w.txt"])
        .expect(0);
}

/// A notice claimed by a process that then dies is another's to send once its lease (60 s)
/// is over, not five minutes later: the user being notified cannot hold it back long by
/// stopping their own pim in the middle of a delivery.
#[test]
fn a_notice_claimed_by_a_process_that_died_is_sent_after_a_short_lease() {
    let env = Env::new();
    let got = env.path("got.txt");
    let go = env.path("go");
    env.init_with(
        &Policy::new()
            .section(
                "notifications.command",
                &[&format!(
                    "argv = [\"/bin/sh\", \"-c\", \"cat >> {got}; echo >> {got}; test -e {go} || sleep 5\"]",
                    got = got.display(),
                    go = go.display()
                )],
            )
            .role("db-admin", "DB", &[]),
    );
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    // assign delivers its own notice after its change; it is ended while the command runs.
    let mut assign = env
        .command(&["--as", "admin", "assign", "bob", "db-admin", "-j", "x"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut waited = 0;
    while std::fs::read_to_string(&got).map_or(true, |s| !s.ends_with('\n')) {
        assert!(waited < 1000, "the command never got the notice");
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    assign.kill().unwrap();
    assign.wait().unwrap();
    std::fs::write(&go, "").unwrap();
    let pending = || {
        env.count(
            "SELECT count(*) FROM outbox WHERE channel = 'command' AND status = 'pending' AND attempts = 0",
        )
    };
    assert_eq!(pending(), 1);
    // Within the lease nobody else sends it ...
    env.at("+30s", &["sweep"]).expect(0);
    assert_eq!(pending(), 1);
    assert_eq!(std::fs::read_to_string(&got).unwrap().lines().count(), 1);
    // ... after it, the next sweep does.
    env.at("+90s", &["sweep"]).expect(0);
    assert_eq!(pending(), 0);
    assert_eq!(std::fs::read_to_string(&got).unwrap().lines().count(), 2);
}

/// A command that never reads its stdin, given a notice larger than a pipe holds, is ended
/// at the delivery's timeout (5 s) like any slow command: writing the notice waits no longer.
#[test]
fn a_command_that_never_reads_its_stdin_is_ended_at_the_timeout() {
    let env = Env::new();
    let many: Vec<String> = (0..6000)
        .map(|i| format!("\"watcher{i}@example.com\""))
        .collect();
    let notify = format!("notify = [{}]", many.join(", "));
    env.init_with(
        &Policy::new()
            .section(
                "notifications.command",
                &["argv = [\"/bin/sleep\", \"30\"]"],
            )
            .role("watched", "Watched", &["require_mfa = false", &notify]),
    );
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    env.as_("admin", &["assign", "bob", "watched", "-j", "x"])
        .expect(0);
    let started = std::time::Instant::now();
    env.as_("bob", &["activate", "watched", "-j", "x"])
        .expect(0);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "activate took {took:?}");
    let payload =
        env.count("SELECT max(length(payload)) FROM outbox WHERE event = 'activation.start'");
    assert!(
        payload > 100_000,
        "{payload} bytes: not more than a pipe holds"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM outbox WHERE event = 'activation.start' AND last_error LIKE '%longer than 5s%'"),
        1
    );
}

/// A command ended at the timeout is ended with what it started: a process it left running
/// in the background does not outlive it (root's sweep left them behind, one more a retry).
#[test]
fn a_command_ended_at_the_timeout_takes_its_children_with_it() {
    let env = Env::new();
    let pid_file = env.path("child.pid");
    env.init_with(
        &Policy::new()
            .section(
                "notifications.command",
                &[&format!(
                    "argv = [\"/bin/sh\", \"-c\", \"sleep 60 & echo $! > {}; wait\"]",
                    pid_file.display()
                )],
            )
            .role("db-admin", "DB", &[]),
    );
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "x"])
        .expect(0);
    assert_eq!(
        env.count("SELECT count(*) FROM outbox WHERE last_error LIKE '%longer than 5s%'"),
        1
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let alive = || {
        std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    // (the kill is sent before pim returns; give the kernel a moment to finish it)
    let start = std::time::Instant::now();
    while alive() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(), "the command's child {} outlived it", pid.trim());
}

/// A policy that sends e-mail through the relay on `port` (no STARTTLS).
fn smtp_at(port: u16) -> Policy {
    Policy::new().section(
        "notifications.smtp",
        &[
            "host = \"127.0.0.1\"",
            &format!("port = {port}"),
            "from = \"pim@example.com\"",
            "starttls = false",
        ],
    )
}

/// bob, made eligible for `db`, activates it, and its notice is left undelivered (the
/// command says so): how long the activation took.
fn activated_undelivered(env: &Env) -> Duration {
    let bob = env.user("bob");
    env.as_("admin", &["assign", "bob", "db", "-j", "x"])
        .expect(0);
    let started = std::time::Instant::now();
    let r = env.activate("bob", &bob, "db", &["-j", "x"]).expect(0);
    let took = started.elapsed();
    assert!(
        r.stderr.contains("could not be delivered yet"),
        "{}",
        r.stderr
    );
    took
}

/// A policy whose command appends each notice to `file`.
fn appending_to(file: &std::path::Path) -> Policy {
    Policy::new()
        .section(
            "notifications.command",
            &[&format!(
                "argv = [\"/bin/sh\", \"-c\", \"cat >> {f}; echo >> {f}\"]",
                f = file.display()
            )],
        )
        .role("db", "DB", &[])
}

/// A database file others could put pages into is not opened at all: another account able
/// to create files beside it could plant a `-wal` (or a hot `-journal`) of its own database
/// there, which SQLite reads (and checkpoints) into it, and have its owner, or root, run that
/// database's commands. One that others could write directly runs no command.
#[test]
fn a_database_file_others_could_write_into_is_refused_or_runs_no_command() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::sqlite();
    let got = env.path("got.jsonl");
    env.init_with(&appending_to(&got));
    env.user("bob");
    let dir = env.path("");
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let sent = || {
        std::fs::read_to_string(&got)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .count()
    };
    let companion = |suffix: &str| {
        let mut p = env.db.clone().into_os_string();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    let (shm, journal) = (companion("-shm"), companion("-journal"));
    assert!(shm.exists());
    let before = std::fs::read(&env.db).unwrap();
    for (path, open, closed) in [
        (&dir, 0o777, 0o700),
        (&dir, 0o1777, 0o700),
        (&dir, 0o770, 0o700),
        (&shm, 0o666, 0o600),
    ] {
        mode(path, open);
        let r = env
            .as_("admin", &["assign", "bob", "db", "-j", "x"])
            .expect(1);
        assert!(
            r.stderr.contains("Refusing to open the database"),
            "{open:o}: {}",
            r.stderr
        );
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        mode(path, closed);
    }
    // A -journal nobody of the owner's made (here: one others may write).
    std::fs::write(&journal, b"").unwrap();
    mode(&journal, 0o666);
    let r = env.run(&["sweep"]).expect(1);
    assert!(
        r.stderr
            .contains("-journal is not the database owner's alone"),
        "{}",
        r.stderr
    );
    std::fs::remove_file(&journal).unwrap();
    // The file itself writable by others: refused as well.
    mode(&env.db, 0o666);
    let r = env.run(&["sweep"]).expect(1);
    assert!(
        r.stderr.contains("other accounts may write it"),
        "{}",
        r.stderr
    );
    mode(&env.db, 0o600);
    assert_eq!(sent(), 0);
    assert_eq!(
        std::fs::read(&env.db).unwrap(),
        before,
        "a refused open changed the file"
    );
    // A file with a second name (a hard link): refused, and opened again once it has one.
    let second = env.path("second.db");
    std::fs::hard_link(&env.db, &second).unwrap();
    let r = env.run(&["sweep"]).expect(1);
    assert!(r.stderr.contains("hard links"), "{}", r.stderr);
    std::fs::remove_file(&second).unwrap();
    // Nor is one made below a directory others may write, nor any directory for it there.
    let open_dir = env.path("open");
    std::fs::create_dir(&open_dir).unwrap();
    mode(&open_dir, 0o777);
    let deep = open_dir.join("new/deeper/x.db");
    let r = env
        .run(&["--db", deep.to_str().unwrap(), "init", "--admin", "x"])
        .expect(1);
    assert!(
        r.stderr.contains("Refusing to create the database"),
        "{}",
        r.stderr
    );
    assert!(!open_dir.join("new").exists());
    let r = env
        .run(&[
            "--db",
            open_dir.join("x.db").to_str().unwrap(),
            "init",
            "--admin",
            "x",
        ])
        .expect(1);
    assert!(
        r.stderr.contains("Refusing to open the database"),
        "{}",
        r.stderr
    );
    assert!(!open_dir.join("x.db").exists());
    // Its owner's alone again: opened, and its command runs.
    env.as_("admin", &["assign", "bob", "db", "-j", "x"])
        .expect(0);
    let r = env.run(&["sweep"]).expect(0);
    assert!(!r.stderr.contains("Note:"), "{}", r.stderr);
    assert_eq!(sent(), 1);
}

/// A server's policy is written by its policy holders, so its commands run for nobody who
/// names it but the account chosen to deliver them (`PIM_RUN_COMMANDS=1`): not for every team
/// member who runs pim, nor for root.
#[test]
fn a_servers_commands_run_only_for_the_account_that_delivers_them() {
    let env = Env::postgres();
    let got = env.path("got.jsonl");
    env.init_with(&appending_to(&got));
    env.user("bob");
    let without = |args: &[&str]| -> support::Run {
        let mut c = env.command(args);
        c.env_remove("PIM_RUN_COMMANDS");
        c.output().unwrap().into()
    };
    without(&["--as", "admin", "assign", "bob", "db", "-j", "x"]).expect(0);
    assert!(
        !got.exists(),
        "a team member's pim ran the server's command"
    );
    let shown = pim::store::pg::describe(env.url());
    for unset in [&["sweep"][..], &["sweep", "--json"]] {
        let r = without(unset).expect(0);
        assert!(
            r.stderr.contains(&format!(
                "That account runs: PIM_RUN_COMMANDS='{shown}' pim sweep"
            )),
            "{}",
            r.stderr
        );
        assert!(!got.exists());
    }
    // Only the server it names: not "1", not another server, not the URL with its password.
    let other = pim::store::pg::describe(&env.url().replace("/pim_", "/other_"));
    assert_ne!(other, shown);
    for value in ["1", other.as_str(), env.url()] {
        if value == shown {
            continue;
        }
        let mut c = env.command(&["sweep"]);
        c.env("PIM_RUN_COMMANDS", value);
        let r: support::Run = c.output().unwrap().into();
        r.expect(0);
        assert!(!got.exists(), "PIM_RUN_COMMANDS={value} ran them");
    }
    env.run(&["sweep"]).expect(0);
    let lines = std::fs::read_to_string(&got).unwrap();
    assert!(lines.contains("\"event\":\"assignment.add\""), "{lines}");
    assert_eq!(lines.lines().filter(|l| !l.is_empty()).count(), 1);
}

/// A relay that takes the connection and never answers costs each message the 5-second
/// timeout; a person's command spends at most 10 seconds on them (then the one under way),
/// and leaves the rest to `pim sweep`, untried.
#[test]
fn a_relay_that_never_answers_holds_a_command_up_ten_seconds_at_most() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let env = Env::new();
    env.init_with(
        &smtp_at(port).role(
                "db",
                "DB",
                &["notify = [\"a@example.com\", \"b@example.com\", \"c@example.com\", \"d@example.com\", \"e@example.com\", \"a@Example.COM\"]"],
            ),
    );
    let took = activated_undelivered(&env);
    assert!(
        took < Duration::from_secs(17),
        "activate took {took:?} for 5 messages to a silent relay"
    );
    let tried = env.count(
        "SELECT count(*) FROM outbox WHERE channel = 'smtp' AND status = 'pending' AND attempts = 1",
    );
    let untried = env.count(
        "SELECT count(*) FROM outbox WHERE channel = 'smtp' AND status = 'pending' AND attempts = 0",
    );
    // (a@Example.COM is a@example.com's mailbox: told once)
    assert_eq!(tried + untried, 5);
    assert!((2..=3).contains(&tried), "{tried} tried");
    // What was left is due now: the next sweep tries it.
    let r = env.run(&["sweep", "--json"]).expect(0).json();
    assert_eq!(
        r["notifications"]["retrying"].as_array().map(Vec::len),
        Some(untried as usize),
        "{r}"
    );
}

/// A relay that answers a line every 2 seconds, forever (each line well within the 5-second
/// timeout), holds one delivery 5 seconds: a step of the conversation (here the greeting) is
/// given 5 seconds as a whole, not 5 seconds a line. Well within the 60-second claim, so no
/// other process sends it meanwhile, and the person's command goes on.
#[test]
fn a_relay_that_answers_slowly_forever_is_given_up_after_five_seconds() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                // A greeting that never ends (and ends after 90 s at the latest).
                for _ in 0..45 {
                    if stream.write_all(b"220-still greeting\r\n").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
            });
        }
    });
    let env = Env::new();
    env.init_with(&smtp_at(port).role("db", "DB", &["notify = [\"a@example.com\"]"]));
    let took = activated_undelivered(&env);
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(12),
        "activate took {took:?}"
    );
    let row = env.count(
        "SELECT count(*) FROM outbox WHERE channel = 'smtp' AND status = 'pending' AND attempts = 1 \
         AND last_error LIKE '%did not answer within 5 s%'",
    );
    assert_eq!(row, 1);
}

/// A delivery given up on closes its connection there and then: it cannot go
/// on sending behind a long `pim sweep`'s back, after its row's claim has lapsed and another
/// process may have claimed it. Two messages to a relay that answers a line every 2 seconds,
/// forever: the first connection is closed before the second one opens.
#[test]
fn a_delivery_given_up_on_closes_its_connection_at_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let drip = Arc::new(AtomicBool::new(false));
    let (tx, seen) = channel::<(usize, &'static str, Instant)>();
    let dripping = drip.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            // Until the test says otherwise, each try fails at once (and is retried later).
            if !dripping.load(Ordering::SeqCst) {
                continue;
            }
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send((n, "open", Instant::now()));
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut buf = [0u8; 512];
                for _ in 0..45 {
                    if let Err(e) = stream.write_all(b"220-still greeting\r\n") {
                        if e.kind() == std::io::ErrorKind::ConnectionReset {
                            let _ = tx.send((n, "reset", Instant::now()));
                        }
                        break;
                    }
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            let _ = tx.send((n, "reset", Instant::now()));
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let _ = tx.send((n, "closed", Instant::now()));
            });
        }
    });
    let env = Env::new();
    env.init_with(&smtp_at(port).role(
        "db",
        "DB",
        &["notify = [\"a@example.com\", \"b@example.com\"]"],
    ));
    let bob = env.user("bob");
    env.as_("admin", &["assign", "bob", "db", "-j", "x"])
        .expect(0);
    env.activate("bob", &bob, "db", &["-j", "x"]).expect(0);
    // Both messages failed once; make them due again, and the relay slow.
    assert_eq!(
        env.count("SELECT count(*) FROM outbox WHERE channel = 'smtp' AND status = 'pending' AND attempts = 1"),
        2
    );
    env.sql("UPDATE outbox SET next_attempt_at = 0 WHERE channel = 'smtp'");
    drip.store(true, Ordering::SeqCst);
    let r = env.run(&["sweep", "--json"]).expect(0).json();
    assert_eq!(
        r["notifications"]["retrying"].as_array().map(Vec::len),
        Some(2),
        "{r}"
    );
    let mut events = Vec::new();
    while let Ok(e) = seen.recv_timeout(Duration::from_secs(5)) {
        events.push(e);
        if events.iter().filter(|e| e.1 == "closed").count() == 2 {
            break;
        }
    }
    let at = |what: &str, nth: usize| {
        events
            .iter()
            .filter(|e| e.1 == what)
            .map(|e| e.2)
            .nth(nth)
            .unwrap_or_else(|| panic!("no {what} #{nth} in {events:?}"))
    };
    let (first_closed, second_opened) = (at("closed", 0), at("open", 1));
    // Reset, not closed: what pim had not sent yet was dropped, not delivered after the fact.
    let first = events.iter().find(|e| e.1 == "open").unwrap().0;
    assert!(
        events.iter().any(|e| e.0 == first && e.1 == "reset"),
        "the first connection was closed, not reset: {events:?}"
    );
    assert!(
        first_closed <= second_opened + Duration::from_millis(500),
        "the first delivery's connection was still open {:?} after the second one began",
        first_closed.duration_since(second_opened)
    );
    let held = first_closed.duration_since(at("open", 0));
    assert!(
        held >= Duration::from_millis(4500) && held < Duration::from_secs(7),
        "held {held:?}"
    );
}

/// With `starttls = true`, mail goes only over TLS: a relay that does not offer STARTTLS, or
/// one that offers it and then speaks no TLS, gets no message in plain text.
#[test]
fn with_starttls_no_message_goes_out_in_plain_text() {
    for offer in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, heard) = channel::<String>();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(5) {
                let Ok(mut stream) = stream else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let _ = stream.write_all(b"220 localhost ESMTP test\r\n");
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        let _ = tx.send(line.clone());
                        let upper = line.to_ascii_uppercase();
                        let answer: &[u8] = if upper.starts_with("EHLO") && offer {
                            b"250-localhost\r\n250 STARTTLS\r\n"
                        } else if upper.starts_with("EHLO") {
                            b"250-localhost\r\n250 8BITMIME\r\n"
                        } else if upper.starts_with("STARTTLS") {
                            // ... and then no TLS at all.
                            b"220 go ahead\r\nthis is not a TLS handshake\r\n"
                        } else {
                            b"250 OK\r\n"
                        };
                        let _ = stream.write_all(answer);
                    }
                });
            }
        });
        let env = Env::new();
        let policy = Policy::new()
            .section(
                "notifications.smtp",
                &[
                    "host = \"127.0.0.1\"",
                    &format!("port = {port}"),
                    "from = \"pim@example.com\"",
                    "starttls = true",
                ],
            )
            .role("db", "DB", &["notify = [\"a@example.com\"]"]);
        env.init_with(&policy);
        activated_undelivered(&env);
        let lines: Vec<String> = heard.try_iter().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.to_ascii_uppercase().starts_with("EHLO")),
            "offer {offer}: the relay heard {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| {
                let l = l.to_ascii_uppercase();
                l.starts_with("MAIL") || l.starts_with("RCPT") || l.starts_with("DATA")
            }),
            "offer {offer}: sent in plain text: {lines:?}"
        );
        let why = if offer { "%" } else { "%STARTTLS%" };
        assert_eq!(
            env.count(&format!(
                "SELECT count(*) FROM outbox WHERE channel = 'smtp' AND status = 'pending' \
                 AND attempts = 1 AND last_error LIKE '{why}'"
            )),
            1,
            "offer {offer}"
        );
    }
}
