//! The two backends side by side: a team moving its SQLite file to PostgreSQL keeps every
//! row and the same audit head, and the same story gives the same head on both.

use crate::support::{self, Env, Run};
use std::process::Command;

/// The head `pim audit verify` reports.
fn head(env: &Env) -> (i64, String) {
    let v = env.run(&["audit", "verify", "--json"]).expect(0).json();
    (
        v["events"].as_i64().unwrap(),
        v["head"].as_str().unwrap().to_string(),
    )
}

/// The head `examples/verify_export.py` computes from a JSONL export, without pim.
fn head_by_python(env: &Env) -> String {
    env.as_(
        "admin",
        &[
            "audit",
            "export",
            "--format",
            "jsonl",
            "--output",
            "audit.jsonl",
        ],
    )
    .expect(0);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verify_export.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(env.path("audit.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    let said = String::from_utf8(out.stdout).unwrap();
    said.split_whitespace()
        .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no head in {said}"))
        .to_string()
}

/// A frozen clock (faketime without `@`), so that two runs write the same times.
const FROZEN: &str = "2026-06-01 12:00:00";

fn frozen(env: &Env, args: &[&str]) -> Run {
    env.at(FROZEN, args)
}

/// The same story, told at the same frozen instant.
fn story(env: &Env) {
    let code_at = |secret: &str, at: &str| {
        let out = Command::new("oathtool")
            .args(["--totp", "-b", secret, "-N", at])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let init = frozen(env, &["init", "--admin", "admin", "--json"]).expect(0);
    let admin = init.json()["secret"].as_str().unwrap().to_string();
    frozen(
        env,
        &[
            "--as",
            "admin",
            "mfa",
            "confirm",
            "--code",
            &code_at(&admin, "2026-06-01 11:59:30"),
        ],
    )
    .expect(0);
    frozen(env, &["--as", "admin", "user", "add", "bob"]).expect(0);
    let bob = frozen(env, &["--as", "bob", "mfa", "enroll", "--json"])
        .expect(0)
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    frozen(
        env,
        &[
            "--as",
            "bob",
            "mfa",
            "confirm",
            "--code",
            &code_at(&bob, "2026-06-01 11:59:30"),
        ],
    )
    .expect(0);
    frozen(
        env,
        &[
            "--as", "admin", "assign", "bob", "db-admin", "--scope", "/prod", "-j", "on call",
        ],
    )
    .expect(0);
    let code = Command::new("oathtool")
        .args(["--totp", "-b", &bob, "-N", FROZEN])
        .output()
        .unwrap();
    let code = String::from_utf8(code.stdout).unwrap().trim().to_string();
    frozen(
        env,
        &[
            "--as", "bob", "activate", "db-admin", "--scope", "/prod", "-j", "INC-7", "--code",
            &code,
        ],
    )
    .expect(0);
    frozen(
        env,
        &["--as", "bob", "deactivate", "db-admin", "--scope", "/prod"],
    )
    .expect(0);
}

#[test]
fn the_same_story_gives_the_same_head_on_both_backends() {
    if support::on_postgres() {
        return; // it runs both itself, in the SQLite pass
    }
    let file = Env::sqlite();
    let server = Env::postgres();
    story(&file);
    story(&server);
    let (n, h) = head(&file);
    assert!(n >= 8, "{n} events");
    assert_eq!(head(&server), (n, h.clone()));
    assert_eq!(head_by_python(&file), h);
    assert_eq!(head_by_python(&server), h);
}

#[test]
fn store_copy_moves_a_team_with_its_chain_intact_and_refuses_a_non_empty_target() {
    if support::on_postgres() {
        return; // from a file to the server: it runs in the SQLite pass
    }
    let file = Env::sqlite();
    let admin = file.init();
    let bob = file.user("bob");
    file.as_("admin", &["assign", "bob", "db-admin", "-j", "dba"])
        .expect(0);
    file.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "-j",
            "INC-1",
            "--code",
            &support::oathtool(&bob, 0),
        ],
    )
    .expect(0);
    let before = head(&file);
    // A node no event explains, far beyond the log (plain `verify` does not look there): it
    // must not reach the server, where the append that reaches it would fail for good.
    file.drop_audit_triggers();
    file.sql("INSERT INTO merkle_nodes (level, idx, hash) VALUES (1, 1000, 'abcd')");
    assert_eq!(head(&file), before);

    // A password in the URL is never shown (the test server trusts local connections).
    let target = Env::postgres();
    let url = target.url().replacen("pim@", "pim:s3cret-pw@", 1);
    let copied = file
        .run(&["store", "copy", "--from", "pim.db", "--to", &url, "--json"])
        .expect(0);
    assert!(!copied.stdout.contains("s3cret-pw"), "{}", copied.stdout);
    let j = copied.json();
    // The caller's key of the file is bound to the server it went to.
    let key_file = j["key"].as_str().unwrap().to_string();
    assert!(key_file.starts_with(file.path(".config/pim/keys").to_str().unwrap()));
    let bound = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(
        bound.lines().nth(1).unwrap(),
        format!("server {}", pim::store::pg::identity(target.url()).unwrap())
    );
    assert_eq!(j["head"], before.1.as_str());
    assert_eq!(j["events"], before.0);
    assert_eq!(j["rows"]["users"], 2);
    assert_eq!(j["rows"]["audit_events"], before.0);
    // The server's Merkle tree is built from the events, whatever the file's tree holds (a
    // planted node, below, is not carried over): every complete subtree over the events, n
    // leaves, n/2 above them, ...: 2n minus the ones in n's binary form.
    let n = before.0;
    let nodes: i64 = support::postgres::client(target.url())
        .query_one("SELECT count(*) FROM merkle_nodes", &[])
        .unwrap()
        .get(0);
    assert_eq!(nodes, 2 * n - i64::from(n.count_ones()));
    let planted: i64 = support::postgres::client(target.url())
        .query_one("SELECT count(*) FROM merkle_nodes WHERE idx >= 1000", &[])
        .unwrap()
        .get(0);
    assert_eq!(planted, 0);

    // The server now tells the same story, and goes on from it.
    let moved = Env {
        dir: crate::support::tempdir(),
        db: target.db.clone(),
    };
    // The key of the TOTP secrets travels with the team (the same instance id names it).
    std::fs::create_dir_all(moved.path(".config/pim")).unwrap();
    Command::new("cp")
        .args(["-r"])
        .arg(file.path(".config/pim/keys"))
        .arg(moved.path(".config/pim/keys"))
        .status()
        .unwrap();
    assert_eq!(head(&moved), before);
    moved.run(&["check", "bob", "db-admin"]).expect(0);
    // The key serves the server (a signed checkpoint needs it).
    moved.as_("admin", &["audit", "checkpoint"]).expect(0);
    moved.as_("admin", &["user", "add", "carol"]).expect(0);
    moved
        .as_("admin", &["assign", "carol", "db-admin", "-j", "new"])
        .expect(0);
    moved.as_("bob", &["deactivate", "db-admin"]).expect(0);
    let _ = admin;
    moved.run(&["audit", "verify"]).expect(0);

    // A second copy into a database that holds one is refused, and changes nothing.
    let again = file
        .run(&["store", "copy", "--from", "pim.db", "--to", &url])
        .expect(5);
    assert!(again.stderr.contains("already holds"), "{}", again.stderr);
    assert!(!again.stderr.contains("s3cret-pw"), "{}", again.stderr);
    // And a server that cannot be reached is named without its password.
    let down = file
        .run(&[
            "store",
            "copy",
            "--from",
            "pim.db",
            "--to",
            "postgres://pim:s3cret-pw@127.0.0.1:1/nowhere",
        ])
        .expect(1);
    assert!(!down.stderr.contains("s3cret-pw"), "{}", down.stderr);
    assert!(
        down.stderr.contains("postgres://pim@127.0.0.1:1/nowhere"),
        "{}",
        down.stderr
    );
    // Nor in any other form a URL may carry it.
    for hidden in [
        "postgres://pim@127.0.0.1:1/x?password=s3cret-pw",
        "postgres://pim@127.0.0.1:1/x?user=pim&PASSWORD=s3cret-pw",
        "postgres://pim:s3cret%2Fpw@127.0.0.1:1/x",
        "postgres://pim@127.0.0.1:1/x?bogus=1&password=s3cret-pw",
    ] {
        let r = file.run(&["--db", hidden, "user", "list"]);
        assert_ne!(r.code, 0);
        assert!(!r.stderr.contains("s3cret"), "{hidden}: {}", r.stderr);
    }
    let query = format!("{}?password=s3cret-pw", Env::postgres().url());
    let init = file
        .run(&["--db", &query, "init", "--admin", "admin", "--json"])
        .expect(0);
    assert!(!init.stdout.contains("s3cret"), "{}", init.stdout);
}

/// A database of its own on the test server, owned by a new login role, with a second login
/// role beside it: (owner, app, database, the database's URL as the server's admin). Names
/// start with `tag` and end with this process's id.
/// A server anyone stands up can name your database's instance id (it is public: in every
/// checkpoint's origin): a key is used for a server only where it was bound to it.
#[test]
fn a_key_signs_for_no_server_it_is_not_bound_to() {
    if support::on_postgres() {
        return; // two servers' databases side by side: it runs in the SQLite pass
    }
    let mine = Env::postgres();
    mine.init();
    let instance: String = support::postgres::client(mine.url())
        .query_one("SELECT value FROM meta WHERE key = 'instance'", &[])
        .unwrap()
        .get(0);
    let real = mine.as_("admin", &["audit", "checkpoint"]).expect(0).stdout;
    // The same server and database with another schema first on the path (a URL's options):
    // pim reads its tables in public all the same, so no one's tables in another schema
    // get a key bound to the server. Without pim setting its path, "no pim database" there.
    support::postgres::client(mine.url())
        .batch_execute("CREATE SCHEMA forged")
        .unwrap();
    let pathed = Env {
        dir: crate::support::tempdir(),
        db: format!("{}?options=-c%20search_path%3Dforged", mine.url()).into(),
    };
    std::fs::create_dir_all(pathed.path(".config")).unwrap();
    Command::new("cp")
        .arg("-r")
        .arg(mine.path(".config/pim"))
        .arg(pathed.path(".config/pim"))
        .status()
        .unwrap();
    let again = pathed
        .as_("admin", &["audit", "checkpoint"])
        .expect(0)
        .stdout;
    assert_eq!(
        again.lines().take(3).collect::<Vec<_>>(),
        real.lines().take(3).collect::<Vec<_>>()
    );
    // Another database, filled as its maker likes, names my instance id; I am asked to run
    // pim on it, with my own keys.
    let theirs = Env {
        dir: crate::support::tempdir(),
        db: support::postgres::fresh_database().into(),
    };
    theirs.init();
    support::postgres::client(theirs.url())
        .execute(
            "UPDATE meta SET value = $1 WHERE key = 'instance'",
            &[&instance],
        )
        .unwrap();
    let mine_url = mine.url().to_string();
    let forged = Env {
        dir: mine.dir,
        db: theirs.db.clone(),
    };
    let cp = forged.path("forged.cp");
    for args in [
        vec!["audit", "checkpoint", "--output", cp.to_str().unwrap()],
        vec!["audit", "key"],
    ] {
        let r = forged.as_("admin", &args).expect(3);
        assert!(
            r.stderr.contains("is not bound to the server postgres://")
                && r.stderr.contains("pim store bind-key"),
            "{}",
            r.stderr
        );
    }
    assert!(!support::exists(&cp));
    // `pim doctor` says why, not that there is no key.
    let found = forged.as_("admin", &["doctor", "--json"]).expect(1).json();
    let key = support::item(&found, "check", "key");
    assert_eq!(key["state"], "problem", "{key}");
    assert!(
        key["detail"]
            .as_str()
            .unwrap()
            .contains("is not bound to the server"),
        "{key}"
    );
    // The driver takes a URL's user part up to its first `@`, wherever it is: a URL that
    // names my server and database up to an `@` hidden in a parameter reaches theirs. It
    // is refused (a parameter of pim's that makes no sense), or reaches theirs named as
    // theirs (not bound); it never gets my key's signature.
    let plain = mine_url.replacen("pim@", "", 1);
    let at = theirs.url().strip_prefix("postgres://pim@").unwrap();
    for (smuggled, code, says) in [
        (
            format!("{plain}?sslmode=x@{at}?user=pim&sslmode=disable"),
            2,
            "sslmode is given twice",
        ),
        (
            format!("{plain}?application_name=x@{at}?user=pim"),
            3,
            "is not bound to the server",
        ),
    ] {
        let out = forged
            .command(&[
                "--as",
                "admin",
                "audit",
                "checkpoint",
                "--output",
                cp.to_str().unwrap(),
            ])
            .env("PIM_DB", &smuggled)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{smuggled}: {stderr}");
        assert!(stderr.contains(says), "{smuggled}: {stderr}");
        assert!(!support::exists(&cp));
    }
    // What needs no key still works there.
    forged.as_("admin", &["role", "list"]).expect(0);
    // Bound on purpose (the owner says the server is theirs), the key serves it: the
    // refusal above was the binding's alone.
    let bound = forged.run(&["store", "bind-key"]).expect(0);
    assert!(
        bound.stdout.contains("is now bound to the server"),
        "{}",
        bound.stdout
    );
    forged
        .as_(
            "admin",
            &["audit", "checkpoint", "--output", cp.to_str().unwrap()],
        )
        .expect(0);
    let again = forged
        .run(&["store", "bind-key", "--json"])
        .expect(0)
        .json();
    assert_eq!(again["already"], true);
    // A server with no key of mine: nothing to bind.
    let none = Env {
        dir: crate::support::tempdir(),
        db: theirs.db.clone(),
    };
    let r = none.run(&["store", "bind-key"]).expect(4);
    assert!(r.stderr.contains("no key of the database"), "{}", r.stderr);
    // A file needs no binding (its owner is the binding), and says so.
    let file = Env::sqlite();
    file.init();
    let r = file.run(&["store", "bind-key"]).expect(2);
    assert!(
        r.stderr.contains("is for a PostgreSQL database"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_server_database_without_pims_schema_table_is_no_pim_database() {
    if !support::on_postgres() {
        return; // a server's catalog: it runs in the PostgreSQL pass
    }
    let env = Env::postgres();
    let r = env.run(&["user", "list"]).expect(1);
    assert!(r.stderr.contains("No pim database at"), "{}", r.stderr);
    // A `pim_schema` that is not a table in the session's schema (a view there, a table in
    // another schema) is not pim's: still none, and nothing was created.
    support::postgres::client(env.url())
        .batch_execute(
            "CREATE SCHEMA elsewhere; \
             CREATE TABLE elsewhere.pim_schema (version BIGINT); \
             INSERT INTO elsewhere.pim_schema VALUES (14); \
             CREATE VIEW public.pim_schema AS SELECT 14::bigint AS version",
        )
        .unwrap();
    let r = env.run(&["user", "list"]).expect(1);
    assert!(r.stderr.contains("No pim database at"), "{}", r.stderr);
    let tables: i64 = support::postgres::client(env.url())
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
}

fn team_database(su: &mut postgres::Client, tag: &str) -> (String, String, String, String) {
    let n = std::process::id();
    let (owner, app, db) = (
        format!("{tag}_owner_{n}"),
        format!("{tag}_app_{n}"),
        format!("{tag}_db_{n}"),
    );
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN; CREATE ROLE {app} LOGIN"
    ))
    .unwrap();
    su.batch_execute(&format!("CREATE DATABASE {db} OWNER {owner}"))
        .unwrap();
    let base = support::postgres::with_database(support::postgres::admin_url(), &db);
    (owner, app, db, base)
}

#[test]
fn the_runtime_role_can_append_to_the_audit_log_but_never_change_it() {
    if !support::on_postgres() {
        return; // roles are the server's: it runs in the PostgreSQL pass
    }
    let admin = support::postgres::admin_url();
    let mut su = support::postgres::client(admin);
    let n = std::process::id();
    let (owner, app, db, base) = team_database(&mut su, "pim_team");
    let as_role = |role: &str| base.replacen("pim@", &format!("{role}@"), 1);
    let (owner_url, app_url) = (as_role(&owner), as_role(&app));

    // The owner creates the schema and grants the runtime role its rights.
    let env = Env {
        dir: crate::support::tempdir(),
        db: owner_url.clone().into(),
    };
    env.init();
    env.run(&["store", "grant", &app]).expect(0);
    let printed = env.run(&["store", "grant", &app, "--print"]).expect(0);
    assert!(
        printed
            .stdout
            .contains("GRANT SELECT, INSERT ON audit_events"),
        "{}",
        printed.stdout
    );
    env.run(&["store", "grant", "x; DROP TABLE users"])
        .expect(2);
    // A superuser (or the owner) could still change the log: refused as a runtime role.
    let r = env.run(&["store", "grant", "pim"]).expect(3);
    assert!(r.stderr.contains("may still change"), "{}", r.stderr);

    // pim runs as the runtime role: every command works.
    // The same home (the key of the TOTP secrets), another role.
    let team = Env {
        dir: env.dir,
        db: app_url.clone().into(),
    };
    let bob = team.user("bob");
    team.as_("admin", &["assign", "bob", "db-admin", "-j", "dba"])
        .expect(0);
    team.as_(
        "bob",
        &[
            "activate",
            "db-admin",
            "-j",
            "INC-1",
            "--code",
            &support::oathtool(&bob, 0),
        ],
    )
    .expect(0);
    team.run(&["audit", "verify"]).expect(0);
    // Someone who does not own the tables cannot grant; pim says so rather than succeed.
    su.batch_execute(&format!("CREATE ROLE spare_{n} LOGIN"))
        .unwrap();
    // A role without the grants is told so (not to create a database that exists).
    let spare = Env {
        dir: crate::support::tempdir(),
        db: as_role(&format!("spare_{n}")).into(),
    };
    let r = spare.run(&["user", "list"]).expect(1);
    assert!(
        r.stderr.contains("may not read pim's tables"),
        "{}",
        r.stderr
    );
    let r = team
        .run(&["store", "grant", &format!("spare_{n}")])
        .expect(3);
    assert!(r.stderr.contains("did not take"), "{}", r.stderr);

    // The runtime role may not change or remove an event; the owner is stopped by the trigger.
    let mut as_app = support::postgres::client(&app_url);
    for sql in [
        "UPDATE audit_events SET canonical = replace(canonical, 'admin', 'mallory') WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "TRUNCATE audit_events",
        "DROP TABLE audit_events",
    ] {
        let e = as_app.batch_execute(sql).unwrap_err();
        let text = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(
            text.contains("permission denied") || text.contains("must be owner"),
            "{sql}: {text}"
        );
    }
    let mut as_owner = support::postgres::client(&owner_url);
    let e = as_owner
        .batch_execute(
            "UPDATE audit_events SET canonical = replace(canonical, 'admin', 'mallory') WHERE seq = 1",
        )
        .unwrap_err();
    assert!(format!("{e:?}").contains("append-only"), "{e:?}");
    // A field is made from the bytes hashed: it cannot be set on its own.
    let e = as_owner
        .batch_execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
        .unwrap_err();
    assert!(
        format!("{e:?}").contains("can only be updated to DEFAULT"),
        "{e:?}"
    );
    team.run(&["audit", "verify"]).expect(0);

    drop((as_app, as_owner));
    for sql in [
        format!("DROP DATABASE {db} WITH (FORCE)"),
        format!("DROP ROLE {app}"),
        format!("DROP ROLE spare_{n}"),
        format!("DROP ROLE {owner}"),
    ] {
        su.batch_execute(&sql).unwrap();
    }
}

/// The migrations run as the owner and name functions and operators without a schema: a
/// schema on the owner's path that another role may create in (PUBLIC on `public`, the
/// default before PostgreSQL 15) could hold a better-matching `format` or `<>` that runs
/// with the owner's rights. pim refuses to migrate there, and where its tables are not in
/// `public`, and says what to run.
#[test]
fn migrations_refuse_a_schema_others_may_create_in() {
    if !support::on_postgres() {
        return; // schemas are the server's: it runs in the PostgreSQL pass
    }
    let admin = support::postgres::admin_url();
    let mut su = support::postgres::client(admin);
    let (owner, app, db, base) = team_database(&mut su, "pim_mig");
    let mut su_db = support::postgres::client(&base);
    let env = Env {
        dir: crate::support::tempdir(),
        db: base.replacen("pim@", &format!("{owner}@"), 1).into(),
    };
    let tables = |su_db: &mut postgres::Client| -> i64 {
        su_db
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    for (grant, who) in [
        (
            format!("GRANT CREATE ON SCHEMA public TO {app}"),
            app.clone(),
        ),
        (
            "GRANT CREATE ON SCHEMA public TO PUBLIC".to_string(),
            "PUBLIC".to_string(),
        ),
    ] {
        su_db.batch_execute(&grant).unwrap();
        let r = env.run(&["init", "--admin", "admin"]).expect(1);
        assert!(
            r.stderr
                .contains(&format!("{who} may create objects in the schema public"))
                && r.stderr
                    .contains(&format!("REVOKE CREATE ON SCHEMA public FROM {who}")),
            "{}",
            r.stderr
        );
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert_eq!(
            tables(&mut su_db),
            0,
            "nothing is created before the refusal"
        );
        su_db
            .batch_execute(&grant.replace("GRANT", "REVOKE").replace(" TO ", " FROM "))
            .unwrap();
    }
    // A schema of the owner's own name comes first on the default path ("$user", public);
    // pim's sessions set their path to public, so the tables go there all the same. The
    // owner alone may create in public (PostgreSQL 15's default): the store is made.
    su_db
        .batch_execute(&format!("CREATE SCHEMA AUTHORIZATION {owner}"))
        .unwrap();
    env.init();
    assert!(tables(&mut su_db) > 0);
    let elsewhere: i64 = su_db
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('public', 'pg_catalog', 'information_schema')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(elsewhere, 0);
    env.run(&["audit", "verify"]).expect(0);
    // The owner's recount writes with the owner's rights too: the same check first.
    let grant = format!("GRANT CREATE ON SCHEMA public TO {app}");
    su_db.batch_execute(&grant).unwrap();
    let r = env.run(&["--as", "admin", "store", "recount"]).expect(1);
    assert!(
        r.stderr
            .contains(&format!("{app} may create objects in the schema public")),
        "{}",
        r.stderr
    );
    su_db
        .batch_execute(&grant.replace("GRANT", "REVOKE").replace(" TO ", " FROM "))
        .unwrap();
    let r = env.run(&["--as", "admin", "store", "recount"]).expect(0);
    assert!(r.stdout.contains("nothing changed"), "{}", r.stdout);

    drop(su_db);
    for sql in [
        format!("DROP DATABASE {db} WITH (FORCE)"),
        format!("DROP ROLE {app}"),
        format!("DROP ROLE {owner}"),
    ] {
        su.batch_execute(&sql).unwrap();
    }
}

/// A copy takes only the columns of this pim's schema, named by pim (a column a file names
/// would be SQL that file's author wrote), and only values of the column's type.
#[test]
fn store_copy_runs_no_sql_a_file_carries_and_refuses_values_of_the_wrong_type() {
    if support::on_postgres() {
        return; // from a file to the server: it runs in the SQLite pass
    }
    let file = Env::sqlite();
    file.init();
    file.as_("admin", &["user", "add", "bob"]).expect(0);
    let copy = |name: &str, sql: &str| -> (Env, Run) {
        let tampered = file.path(name);
        std::fs::copy(&file.db, &tampered).unwrap();
        let conn = rusqlite::Connection::open(&tampered).unwrap();
        conn.execute_batch(sql).unwrap();
        drop(conn);
        let target = Env::postgres();
        let r = file.run(&["store", "copy", "--from", name, "--to", target.url()]);
        (target, r)
    };
    let users = |target: &Env| -> i64 {
        support::postgres::client(target.url())
            .query_one("SELECT count(*) FROM users", &[])
            .unwrap()
            .get(0)
    };
    let (target, r) = copy(
        "injected.db",
        "ALTER TABLE users RENAME COLUMN mfa_blocked TO \"mfa_blocked\"\" /* */ FROM users -- \"",
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(users(&target), 0, "nothing was kept");
    let (target, r) = copy(
        "typed.db",
        "UPDATE users SET disabled = 'AAAAAAAA' WHERE name = 'bob'",
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("does not fit"), "{}", r.stderr);
    assert_eq!(users(&target), 0, "nothing was kept");
    // The same target takes the copy once the file is right.
    file.run(&["store", "copy", "--from", "pim.db", "--to", target.url()])
        .expect(0);
    assert_eq!(users(&target), 2);
}

/// `sslmode=require` encrypts the connection and verifies the server: against the
/// authority `sslrootcert` names; a server whose certificate no known authority signed is
/// refused. (Run against a cluster of this test's own that refuses unencrypted connections.)
#[test]
fn tls_connections_are_encrypted_and_the_server_is_verified() {
    if support::on_postgres() {
        return; // a cluster of its own: once is enough
    }
    let (admin, ca) = support::postgres::start_tls_cluster();
    // The admin client itself needs TLS too: make the database through a local socket.
    let dir = std::path::Path::new(&ca).parent().unwrap().to_path_buf();
    let port = admin.rsplit(':').next().unwrap().split('/').next().unwrap();
    let out = Command::new("psql")
        .args([
            "-h",
            dir.to_str().unwrap(),
            "-p",
            port,
            "-U",
            "pim",
            "-d",
            "postgres",
            "-c",
            "CREATE DATABASE tls",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    let base = format!("postgres://pim@localhost:{port}/tls");
    let env = Env::sqlite();
    let with = |query: &str, args: &[&str]| -> Run {
        let db = format!("{base}{query}");
        let mut all = vec!["--db", db.as_str()];
        all.extend_from_slice(args);
        env.run(&all)
    };
    // Unencrypted: the server refuses it.
    let r = with("", &["init", "--admin", "admin"]).expect(1);
    assert!(r.stderr.contains("no encryption"), "{}", r.stderr);
    // Encrypted, but the certificate's authority is unknown: refused by pim.
    let r = with("?sslmode=require", &["init", "--admin", "admin"]).expect(1);
    assert!(r.stderr.contains("certificate"), "{}", r.stderr);
    // Verified against the test's authority: works end to end.
    let ca_q = format!("?sslmode=verify-full&sslrootcert={}", ca.display());
    with(&ca_q, &["init", "--admin", "admin"]).expect(0);
    with(&ca_q, &["--as", "admin", "user", "add", "bob"]).expect(0);
    with(&ca_q, &["--as", "admin", "audit", "verify"]).expect(0);
    // Bad settings are usage errors, and a file without certificates is named.
    with("?sslmode=allow", &["--as", "admin", "audit", "verify"]).expect(2);
    with("?sslmode=prefer", &["--as", "admin", "audit", "verify"]).expect(2);
    with(
        "?sslmode=require&sslrootcert=ca.crt",
        &["--as", "admin", "audit", "verify"],
    )
    .expect(2);
    with(
        &format!("?sslrootcert={}", ca.display()),
        &["--as", "admin", "audit", "verify"],
    )
    .expect(2);
    let r = with(
        &format!(
            "?sslmode=require&sslrootcert={}",
            dir.join("server.key").display()
        ),
        &["--as", "admin", "audit", "verify"],
    )
    .expect(1);
    assert!(r.stderr.contains("certificate"), "{}", r.stderr);
}

/// The counts are not off for what the clock or pim itself decides (`pim doctor` finds
/// nothing, `pim store recount` changes nothing): an eligibility that starts later, one that
/// ended and was not swept yet, a disabled holder, a removed one.
#[test]
fn counts_agree_through_what_the_clock_and_pim_decide() {
    let env = Env::new();
    env.init();
    for name in ["bob", "erin", "frank", "gina", "hal"] {
        env.user(name);
    }
    let assign = |args: &[&str]| {
        let mut all = vec!["assign"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-j", "x"]);
        env.as_("admin", &all).expect(0);
    };
    assign(&["bob", "db-admin"]);
    assign(&["erin", "db-admin", "--start", "2099-01-01"]);
    assign(&["frank", "db-admin", "--duration", "1h"]);
    assign(&["gina", "db-admin"]);
    assign(&["hal", "db-admin"]);
    env.as_("admin", &["user", "disable", "gina"]).expect(0);
    env.as_("admin", &["unassign", "hal", "db-admin"]).expect(0);
    let later = |args: &[&str]| {
        let mut all = vec!["--as", "admin"];
        all.extend_from_slice(args);
        env.at("+2h", &all)
    };
    let roles = later(&["role", "list", "--json"]).expect(0).json();
    let db_admin = support::item(&roles, "key", "db-admin");
    assert_eq!(db_admin["eligible"], 1, "bob alone: {db_admin}");
    let f = support::item(&later(&["doctor", "--json"]).json(), "check", "counts");
    assert_eq!(f["state"], "ok", "{f}");
    let r = later(&["store", "recount"]).expect(0);
    assert!(r.stdout.contains("nothing changed"), "{}", r.stdout);
}

/// The counts of eligible holders `role list` shows, changed behind pim's back: `pim doctor`
/// finds them off and names the fix, `pim store recount` (permission `policy`, audited)
/// counts them again from the assignments, and a second recount changes nothing.
#[test]
fn recount_repairs_counts_changed_behind_pims_back() {
    let env = Env::new();
    env.init();
    for name in ["bob", "carol", "dave"] {
        env.user(name);
    }
    for (user, scope) in [("bob", "/a"), ("bob", "/b"), ("carol", "/")] {
        env.as_(
            "admin",
            &["assign", user, "db-admin", "--scope", scope, "-j", "x"],
        )
        .expect(0);
    }
    let eligible = |env: &Env| -> i64 {
        let roles = env
            .as_("admin", &["role", "list", "--json"])
            .expect(0)
            .json();
        support::item(&roles, "key", "db-admin")["eligible"]
            .as_i64()
            .unwrap()
    };
    let counts = |env: &Env, code: i32| -> serde_json::Value {
        let found = env.as_("admin", &["doctor", "--json"]).expect(code).json();
        support::item(&found, "check", "counts")
    };
    assert_eq!(eligible(&env), 2);
    // A doctor with only warnings exits 0; the counts themselves are fine.
    assert_eq!(counts(&env, 0)["state"], "ok");

    // What writes with the triggers out of the way leave: a role's count off, a holder
    // missing (carol), one kept with another number (bob has two), one kept who has
    // nothing (dave).
    env.sql(
        "UPDATE role_counts SET users = 7 WHERE role = 'db-admin'; \
         DELETE FROM role_holders WHERE user_id = (SELECT id FROM users WHERE name = 'carol'); \
         UPDATE role_holders SET n = 5 WHERE user_id = (SELECT id FROM users WHERE name = 'bob'); \
         INSERT INTO role_holders (role, user_id, n) SELECT 'ops', id, 1 FROM users WHERE name = 'dave'; \
         DELETE FROM role_counts WHERE role = 'ops'; INSERT INTO role_counts (role, users) VALUES ('ops', 1)",
    );
    assert_eq!(eligible(&env), 7);
    let f = counts(&env, 1);
    assert_eq!(f["state"], "problem", "{f}");
    let detail = f["detail"].as_str().unwrap();
    assert!(
        detail
            .contains("3 role-user pair(s) off; db-admin 7 kept, 2 counted, ops 1 kept, 0 counted"),
        "{f}"
    );
    assert!(
        f["fix"].as_str().unwrap().starts_with("pim store recount"),
        "{f}"
    );

    // Not for everyone: bob may not (no `policy`), and the refusal is recorded.
    let r = env.as_("bob", &["store", "recount"]).expect(3);
    assert!(r.stderr.contains("policy"), "{}", r.stderr);
    assert_eq!(eligible(&env), 7);
    let refused = env.count(
        "SELECT count(*) FROM audit_events WHERE action = 'store.recount' AND result <> 'ok'",
    );
    assert_eq!(refused, 1);

    let done = env
        .as_("admin", &["store", "recount", "--json"])
        .expect(0)
        .json();
    assert_eq!(done["recounted"], true, "{done}");
    assert_eq!(done["pairs"], 3, "{done}");
    assert_eq!(
        done["roles"],
        serde_json::json!([
            {"role": "db-admin", "kept": 7, "counted": 2},
            {"role": "ops", "kept": 1, "counted": 0}
        ]),
        "{done}"
    );
    assert_eq!(eligible(&env), 2);
    assert_eq!(counts(&env, 0)["state"], "ok");
    let recorded = || {
        env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'store.recount' AND result = 'ok'",
        )
    };
    assert_eq!(recorded(), 1);
    // Nothing off: nothing written, nothing recorded.
    let again = env.as_("admin", &["store", "recount"]).expect(0);
    assert!(again.stdout.contains("nothing changed"), "{}", again.stdout);
    assert_eq!(recorded(), 1);
    env.run(&["audit", "verify"]).expect(0);
}

/// On PostgreSQL the runtime role reads the counts and never writes them: its recount is
/// refused with what to run instead, and the owner's works.
#[test]
fn the_runtime_role_may_not_write_the_counts() {
    if !support::on_postgres() {
        return; // roles are the server's: it runs in the PostgreSQL pass
    }
    let mut su = support::postgres::client(support::postgres::admin_url());
    let (owner, app, db, base) = team_database(&mut su, "pim_count");
    let as_role = |role: &str| base.replacen("pim@", &format!("{role}@"), 1);
    let owner_env = Env {
        dir: crate::support::tempdir(),
        db: as_role(&owner).into(),
    };
    owner_env.init();
    owner_env.run(&["store", "grant", &app]).expect(0);
    owner_env.user("bob");
    owner_env
        .as_("admin", &["assign", "bob", "db-admin", "-j", "x"])
        .expect(0);
    owner_env.sql("UPDATE role_counts SET users = 5 WHERE role = 'db-admin'");
    let app_env = Env {
        dir: crate::support::tempdir(),
        db: as_role(&app).into(),
    };
    let r = app_env.as_("admin", &["store", "recount"]).expect(3);
    assert!(r.stderr.contains("owner's URL"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    // On record, as any refusal is.
    assert_eq!(
        owner_env.count(
            "SELECT count(*) FROM audit_events WHERE action = 'store.recount' AND result <> 'ok'"
        ),
        1
    );
    assert_eq!(
        owner_env.count("SELECT users FROM role_counts WHERE role = 'db-admin'"),
        5
    );
    let done = owner_env
        .as_("admin", &["store", "recount", "--json"])
        .expect(0)
        .json();
    assert_eq!(done["roles"][0]["counted"], 1, "{done}");
    assert_eq!(
        owner_env.count("SELECT users FROM role_counts WHERE role = 'db-admin'"),
        1
    );
    for sql in [
        format!("DROP DATABASE {db} WITH (FORCE)"),
        format!("DROP ROLE {app}"),
        format!("DROP ROLE {owner}"),
    ] {
        su.batch_execute(&sql).unwrap();
    }
}

/// pims opening a store of an older schema at the same moment all open it: each step is
/// applied once, by whichever gets to it first (the others found `DROP INDEX` of an index
/// already dropped, and said the file was no pim database; found by a reviewer).
#[test]
fn pims_upgrading_one_store_at_once_all_open_it() {
    if support::on_postgres() {
        // PostgreSQL's runner reads the version again under its lock (tested apart).
        return;
    }
    let env = Env::new();
    env.init();
    for round in 0..8 {
        // The store as schema 12 left it.
        let conn = rusqlite::Connection::open(&env.db).unwrap();
        conn.execute_batch(
            "DROP INDEX assignments_by_user; DROP INDEX assignments_by_grant; \
             CREATE INDEX assignments_by_role ON assignments (role); \
             CREATE INDEX assignments_current ON assignments (user_id, role, scope, kind); \
             PRAGMA user_version = 12;",
        )
        .unwrap();
        drop(conn);
        let pims: Vec<_> = (0..3)
            .map(|_| {
                env.command(&["--as", "admin", "role", "list"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for pim in pims {
            let out = pim.wait_with_output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            env.count("PRAGMA user_version"),
            pim::store::MIGRATIONS.len() as i64
        );
    }
}

/// Whether `audit verify` read the events as the bytes hashed (`true`) or as their fields:
/// the statement it sent, seen with strace.
fn verify_reads_bytes(env: &Env, code: i32) -> (bool, Run) {
    let (bytes, run, _) = verify_traced(env, code);
    (bytes, run)
}

/// `verify_reads_bytes`, and the statements verify sent.
fn verify_traced(env: &Env, code: i32) -> (bool, Run, String) {
    let trace = env.path("verify.trace");
    let mut c = Command::new("strace");
    c.args(["-f", "-e", "trace=sendto,write", "-s", "120", "-o"])
        .arg(&trace)
        .arg(support::bin())
        .args(["audit", "verify"]);
    env.environment(&mut c);
    let out = c.output().expect("strace runs");
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let sent = std::fs::read_to_string(&trace).unwrap();
    let bytes =
        sent.contains("COPY (SELECT seq, canonical, prev_hash, hash FROM public.audit_events");
    let fields = sent.contains("COPY (SELECT seq, time, actor");
    assert!(bytes != fields, "one way or the other: {sent}");
    (bytes, Run::from(out), sent)
}

/// PostgreSQL keeps an event as the bytes its hash was made from and makes its fields from
/// them (migration 14). `audit verify` hashes only those bytes while every field is made
/// from them by the table's own expressions, and reads the fields, as before, once an owner
/// changed how any is made: a field set on its own, one made another way, or made with an
/// operator of someone's own that reads the same.
#[test]
fn verify_hashes_a_servers_bytes_only_while_its_fields_are_made_from_them() {
    if !support::on_postgres() {
        return; // the layout is the server's: it runs in the PostgreSQL pass
    }
    let fresh = || {
        let env = Env::new();
        env.init();
        env.user("bob");
        env.as_(
            "admin",
            &[
                "assign",
                "bob",
                "db-admin",
                "-j",
                &format!("on-call \"x\" \\ é {}", "x".repeat(80)),
            ],
        )
        .expect(0);
        env
    };
    let made = |env: &Env| {
        pim::store::pg::open(env.url(), false)
            .unwrap()
            .conn
            .fields_made()
            .unwrap()
    };
    // Not made from the bytes: verify reads the fields, and finds the forgery.
    let fields_found_forged = |env: &Env| {
        assert!(!made(env));
        let (bytes, r) = verify_reads_bytes(env, 1);
        assert!(!bytes);
        assert!(r.stderr.contains("do not match its hash"), "{}", r.stderr);
    };

    let env = fresh();
    assert!(made(&env));
    assert!(verify_reads_bytes(&env, 0).0);
    // The bytes changed: the fields follow them, and the hash does not hold.
    env.sql(
        "ALTER TABLE audit_events DISABLE TRIGGER USER; \
         UPDATE audit_events SET canonical = replace(canonical, 'on-call', 'on-cal1') WHERE canonical LIKE '%on-call%'",
    );
    let seq = env.count("SELECT seq FROM audit_events WHERE justification LIKE 'on-cal1%'");
    let (bytes, r) = verify_reads_bytes(&env, 1);
    assert!(bytes);
    assert!(r.stderr.contains(&format!("event {seq}")), "{}", r.stderr);

    // A field set on its own, once no longer made from the bytes.
    let env = fresh();
    env.sql(
        "ALTER TABLE audit_events DISABLE TRIGGER USER; \
         ALTER TABLE audit_events ALTER COLUMN justification DROP EXPRESSION; \
         UPDATE audit_events SET justification = 'on-cal1' WHERE justification LIKE 'on-call%'",
    );
    fields_found_forged(&env);

    // A field made another way.
    let env = fresh();
    env.sql(
        "ALTER TABLE audit_events DROP COLUMN actor; \
         ALTER TABLE audit_events ADD COLUMN actor TEXT GENERATED ALWAYS AS ('root') STORED",
    );
    assert!(!made(&env));
    assert!(!verify_reads_bytes(&env, 1).0);

    // A field of another type: `name` keeps 63 bytes of what was hashed.
    let env = fresh();
    env.sql("ALTER TABLE audit_events ALTER COLUMN justification TYPE name");
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE octet_length(justification::text) = 63"),
        1
    );
    fields_found_forged(&env);

    // A table that inherits the log: every read of the log reads its rows too, their
    // fields made by its own columns (PostgreSQL 15 holds them to the log's expressions;
    // pim does not count on every version doing so).
    let env = fresh();
    env.sql("CREATE TABLE more_events () INHERITS (audit_events)");
    assert!(!made(&env));
    assert!(!verify_reads_bytes(&env, 0).0);

    // The same expression, read with an `=` of the owner's that holds for any two texts:
    // NULLIF then makes every principal absent, and the expression reads as pim's.
    let env = fresh();
    env.sql(
        "SET search_path = public, pg_catalog; \
         CREATE FUNCTION public.same(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true'; \
         CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.same); \
         ALTER TABLE audit_events DROP COLUMN principal; \
         ALTER TABLE audit_events ADD COLUMN principal TEXT \
             GENERATED ALWAYS AS (NULLIF(((canonical)::jsonb ->> 4), '')) STORED",
    );
    assert_eq!(
        env.count("SELECT count(*) FROM audit_events WHERE principal IS NOT NULL"),
        0
    );
    fields_found_forged(&env);
}

/// Read as the rows lie, an event PostgreSQL put where an earlier page had room (as it puts
/// most new rows after a vacuum; here one written again as it was) is met before its turn,
/// or after the events that follow it: `audit verify` keeps those until its turn comes, and
/// reads the log once. An event missing has it read again by number, which names it.
#[test]
fn verify_on_a_server_takes_events_in_turn_wherever_they_lie() {
    if !support::on_postgres() {
        return; // the layout is the server's: it runs in the PostgreSQL pass
    }
    let env = Env::new();
    env.init();
    env.user("bob");
    let before = head(&env);
    env.sql(
        "ALTER TABLE audit_events DISABLE TRIGGER USER; \
         UPDATE audit_events SET canonical = canonical WHERE seq = 3",
    );
    assert_eq!(
        env.count("SELECT count(*) FROM (SELECT seq, ctid, lag(ctid) OVER (ORDER BY seq) AS before FROM audit_events) m WHERE ctid < before"),
        1,
        "event 3 now lies after the others"
    );
    assert_eq!(head(&env), before);
    let (bytes, _, sent) = verify_traced(&env, 0);
    assert!(bytes);
    assert_eq!(sent.matches("COPY (SELECT").count(), 1, "one read: {sent}");

    env.sql("DELETE FROM audit_events WHERE seq = 4");
    let (bytes, r, sent) = verify_traced(&env, 1);
    assert!(bytes);
    assert!(r.stderr.contains("event 4 is missing"), "{}", r.stderr);
    assert!(
        sent.contains("FROM public.audit_events ORDER BY seq"),
        "{sent}"
    );
}

/// Migration 14 on a server's log made before it: every event kept as the bytes its hash
/// was made from, which the server writes itself from the fields (its JSON must be pim's to
/// the byte, for text that JSON escapes too), the fields read back as they were, the same
/// head and Merkle root, and a runtime role's rights on the log kept.
#[test]
fn an_older_servers_log_is_kept_as_the_bytes_hashed() {
    if !support::on_postgres() {
        return; // the layout is the server's: it runs in the PostgreSQL pass
    }
    // A chain made by pim (on SQLite), with text that JSON escapes and times on both sides
    // of a day and of a leap day.
    let local = Env::sqlite();
    local.init();
    local.user("bob");
    let db = pim::store::open(&local.db).unwrap().conn;
    let odd = "quote \" backslash \\ tab \t newline \n bell \u{7} escape \u{1b} del \u{7f} \
               separator \u{2028} é 🔐 ''";
    for (i, at) in [
        "2028-02-29T23:59:59Z",
        "2028-03-01T00:00:00Z",
        "1999-12-31T12:30:05Z",
    ]
    .iter()
    .enumerate()
    {
        let at = chrono::DateTime::parse_from_rfc3339(at).unwrap().to_utc();
        let tx = db.write().unwrap();
        let e = pim::audit::Event::new("admin", "test.odd")
            .principal("bob")
            .role(odd)
            .request(i as i64 + 7)
            .justification(Some(odd))
            .ticket((i == 0).then_some(""))
            .expires(Some(at.timestamp() + 86_399))
            .detail("text", odd);
        pim::audit::append(&tx, at, e).unwrap();
        tx.commit().unwrap();
    }
    let want = pim::audit::verify(&db).unwrap();
    assert!(want.ok);
    let mut events = Vec::new();
    pim::audit::for_each(&db, &Default::default(), None, |e| {
        events.push(e.fields());
        Ok(())
    })
    .unwrap();
    let tree: Vec<(i64, i64, String)> = {
        let c = rusqlite::Connection::open(&local.db).unwrap();
        let mut s = c
            .prepare("SELECT level, idx, hash FROM merkle_nodes")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };

    // The same rows in a server's schema 13, with a runtime role that may read and append.
    let url = support::postgres::fresh_database();
    let app = format!("pim_app14_{}", std::process::id());
    let mut c = support::postgres::client(&url);
    c.batch_execute(
        "CREATE TABLE pim_schema (version BIGINT NOT NULL); INSERT INTO pim_schema VALUES (13)",
    )
    .unwrap();
    for sql in &pim::store::pg::MIGRATIONS[..13] {
        c.batch_execute(sql).unwrap();
    }
    {
        let lite = rusqlite::Connection::open(&local.db).unwrap();
        let mut s = lite
            .prepare(
                "SELECT seq, time, actor, action, principal, role, scope, request, justification, \
                 ticket, expires, result, details, prev_hash, hash FROM audit_events ORDER BY seq",
            )
            .unwrap();
        let mut rows = s.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let int = |i| r.get::<_, Option<i64>>(i).unwrap();
            let text = |i| r.get::<_, Option<String>>(i).unwrap();
            c.execute(
                "INSERT INTO audit_events (seq, time, actor, action, principal, role, scope, \
                 request, justification, ticket, expires, result, details, prev_hash, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                &[
                    &int(0),
                    &int(1),
                    &text(2),
                    &text(3),
                    &text(4),
                    &text(5),
                    &text(6),
                    &int(7),
                    &text(8),
                    &text(9),
                    &int(10),
                    &text(11),
                    &text(12),
                    &text(13),
                    &text(14),
                ],
            )
            .unwrap();
        }
    }
    for (level, idx, hash) in &tree {
        c.execute(
            "INSERT INTO merkle_nodes (level, idx, hash) VALUES ($1, $2, $3)",
            &[level, idx, hash],
        )
        .unwrap();
    }
    c.batch_execute(&format!(
        "UPDATE audit_head SET seq = {}; DROP ROLE IF EXISTS {app}; CREATE ROLE {app}; \
         GRANT SELECT ON audit_events TO {app}; \
         GRANT INSERT ON audit_events TO {app} WITH GRANT OPTION; \
         GRANT SELECT ON audit_events TO PUBLIC",
        events.len()
    ))
    .unwrap();

    // A view on the log holds the rebuild up, and is named; without it, opened by this pim:
    // migrated.
    c.batch_execute("CREATE VIEW audit_seqs AS SELECT seq FROM audit_events")
        .unwrap();
    let held = pim::store::pg::open(&url, false).err().unwrap().to_string();
    assert!(
        held.contains("views on audit_events hold its rebuild up: audit_seqs"),
        "{held}"
    );
    c.batch_execute("DROP VIEW audit_seqs").unwrap();
    let server = pim::store::pg::open(&url, false).unwrap().conn;
    assert_eq!(
        c.query_one("SELECT version FROM pim_schema", &[])
            .unwrap()
            .get::<_, i64>(0),
        pim::store::pg::MIGRATIONS.len() as i64
    );
    assert!(server.fields_made().unwrap());
    let got = pim::audit::verify(&server).unwrap();
    assert!(got.ok, "{got:?}");
    assert_eq!(
        (got.events, &got.head, &got.root),
        (want.events, &want.head, &want.root)
    );
    let mut back = Vec::new();
    pim::audit::for_each(&server, &Default::default(), None, |e| {
        back.push(e.fields());
        Ok(())
    })
    .unwrap();
    assert_eq!(back, events);
    assert!(back.iter().any(|f| f[8] == odd), "the odd text came over");
    let may = |c: &mut postgres::Client, privilege: &str| -> bool {
        c.query_one(
            "SELECT has_table_privilege($1, 'audit_events', $2)",
            &[&app, &privilege],
        )
        .unwrap()
        .get(0)
    };
    assert!(may(&mut c, "SELECT") && may(&mut c, "INSERT"));
    let kept: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a \
             WHERE c.oid = 'audit_events'::regclass AND ((a.grantee = 0 AND a.privilege_type = 'SELECT') \
             OR (a.grantee = $1::text::regrole AND a.privilege_type = 'INSERT' AND a.is_grantable))",
            &[&app],
        )
        .unwrap()
        .get(0);
    assert_eq!(kept, 2, "PUBLIC's grant and the grant option came over");
    assert!(!may(&mut c, "UPDATE") && !may(&mut c, "DELETE"));
    // Still append-only, and a field still cannot be set on its own.
    for sql in [
        "UPDATE audit_events SET canonical = canonical WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
    ] {
        let e = c.batch_execute(sql).unwrap_err();
        assert!(format!("{e:?}").contains("append-only"), "{sql}: {e:?}");
    }
    c.batch_execute(&format!("DROP OWNED BY {app}; DROP ROLE {app}"))
        .unwrap();
}

/// The owner's row security never decides what pim reads: a policy could hide an event from
/// one read and not another (`audit verify` hashing the log while `audit list` shows a
/// forged event in its place), and a policy's function runs in pim's session, where it
/// could make a temporary `audit_events` read in place of the log. pim's sessions run with
/// row security off and their temporary schema last on the path: such a table is an error,
/// never a filtered read. (Both found by a reviewer, each fooling `verify` before.)
#[test]
fn a_servers_row_security_never_decides_what_pim_reads() {
    if !support::on_postgres() {
        return; // policies are the server's: it runs in the PostgreSQL pass
    }
    // The owner of the schema, not a superuser (whom row security never binds).
    let mut su = support::postgres::client(support::postgres::admin_url());
    let mut made = Vec::new();
    let mut fresh = |tag: &str| {
        let (owner, app, db, base) = team_database(&mut su, tag);
        let env = Env {
            dir: crate::support::tempdir(),
            db: base.replacen("pim@", &format!("{owner}@"), 1).into(),
        };
        env.init();
        env.user("bob");
        made.push((owner, app, db));
        env
    };
    let forged = |env: &Env| {
        let list = env.as_("admin", &["audit", "list", "--json"]);
        list.code == 0 && list.stdout.contains("mallory")
    };

    // Event 5 (admin made eligible for global-admin) forged for list and export only.
    let env = fresh("pim_rls_a");
    env.sql(
        "ALTER TABLE audit_events DROP CONSTRAINT audit_events_pkey; \
         CREATE TABLE hide_from_list (seq bigint); INSERT INTO hide_from_list VALUES (5); \
         CREATE TABLE hide_from_verify (c text); \
         INSERT INTO hide_from_verify SELECT replace(canonical, '\"admin\",\"global-admin\"', '\"mallory\",\"global-admin\"') \
             FROM audit_events WHERE seq = 5; \
         INSERT INTO audit_events (canonical, prev_hash, hash) \
             SELECT c, e.prev_hash, e.hash FROM hide_from_verify, audit_events e WHERE e.seq = 5; \
         CREATE FUNCTION vis(c text, s bigint) RETURNS bool LANGUAGE sql STABLE AS $$ \
           SELECT CASE WHEN current_query() LIKE '%canonical%' \
                  THEN c NOT IN (SELECT h.c FROM hide_from_verify h) \
                  ELSE NOT (s IN (SELECT seq FROM hide_from_list) AND c NOT IN (SELECT h.c FROM hide_from_verify h)) END $$; \
         ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY; \
         ALTER TABLE audit_events FORCE ROW LEVEL SECURITY; \
         CREATE POLICY p ON audit_events FOR SELECT USING (vis(canonical, seq)); \
         CREATE POLICY pi ON audit_events FOR INSERT WITH CHECK (true)",
    );
    let r = env.as_("admin", &["audit", "verify"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("row-level security"), "{}", r.stderr);
    assert!(!forged(&env));

    // A temporary log made in pim's own session, by a policy's function on the schema row.
    let env = fresh("pim_rls_b");
    env.sql(
        "CREATE FUNCTION public.inject() RETURNS bool LANGUAGE plpgsql VOLATILE AS $$ \
         BEGIN \
           IF pg_catalog.to_regclass('pg_temp.audit_events') IS NULL THEN \
             CREATE TEMP TABLE audit_events AS \
               SELECT canonical, prev_hash, hash, seq, time, actor, action, \
                      CASE WHEN seq = 5 THEN 'mallory' ELSE principal END AS principal, \
                      role, scope, request, justification, ticket, expires, result, details \
                 FROM public.audit_events; \
           END IF; \
           RETURN true; \
         END $$; \
         ALTER TABLE pim_schema ENABLE ROW LEVEL SECURITY; \
         ALTER TABLE pim_schema FORCE ROW LEVEL SECURITY; \
         CREATE POLICY p ON pim_schema USING (public.inject())",
    );
    let r = env.as_("admin", &["audit", "verify"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("row-level security"), "{}", r.stderr);
    assert!(!forged(&env));
    drop(env);
    for (owner, app, db) in made {
        for sql in [
            format!("DROP DATABASE {db} WITH (FORCE)"),
            format!("DROP ROLE {app}"),
            format!("DROP ROLE {owner}"),
        ] {
            su.batch_execute(&sql).unwrap();
        }
    }
}
