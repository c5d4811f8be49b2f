//! Performance by construction (issue 12): no command on a hot path reads a growing table
//! whole. Test builds write each SQLite statement a command runs, with its query plan, to
//! `PIM_TEST_PLANS`; here every plan of the hot commands is read back and a full scan of a
//! table that grows with use is a failure. (The figures themselves come from
//! `examples/bench.py`, a benchmark, not a timed test.)

use crate::support::{self, oathtool, Env, Policy};

/// Tables that grow with users, assignments, requests and events.
const GROWING: [&str; 10] = [
    "users",
    "role_holders",
    "assignments",
    "requests",
    "decisions",
    "audit_events",
    "merkle_nodes",
    "outbox",
    "reviews",
    "review_items",
];

/// Partial indexes (`WHERE removed_at IS NULL`, ...): a scan of one reads only the rows the
/// query wants.
const PARTIAL: [&str; 5] = [
    "assignments_ending",
    "assignments_expiring",
    "assignments_scheduled",
    "reviews_open",
    "reviews_to_repeat",
];

/// Run `args` (expecting exit `code`) with its statements' plans written down; every
/// full scan of a growing table among them, and every statement SQLite prepared again.
fn scans(env: &Env, name: &str, args: &[&str], code: i32) -> Vec<String> {
    let file = env.path(&format!("plans-{name}.txt"));
    let out = env
        .command(args)
        .env("PIM_TEST_PLANS", &file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(!text.is_empty(), "{name}: no statement was written down");
    text.lines()
        .filter(|line| {
            let (sql, plan) = line.split_once('\t').unwrap_or((line, ""));
            // Parsed and planned again each time it runs: as bad on a hot path.
            plan == "REPREPARED"
                || plan.split(" | ").any(|step| {
                    let mut words = step.split_whitespace();
                    words.next() == Some("SCAN")
                        && words
                            .next()
                            .is_some_and(|t| GROWING.contains(&table_of(sql, t)))
                        && !PARTIAL
                            .iter()
                            .any(|p| step.ends_with(&format!("INDEX {p}")))
                })
        })
        .map(str::to_string)
        .collect()
}

/// The table `name` stands for in `sql`: itself, or the table it is an alias of
/// (`FROM assignments a`, `JOIN users AS u`); plans name aliases.
fn table_of<'a>(sql: &'a str, name: &'a str) -> &'a str {
    let words: Vec<&str> = sql
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        if !(w.eq_ignore_ascii_case("FROM") || w.eq_ignore_ascii_case("JOIN")) {
            continue;
        }
        let Some(table) = words.get(i + 1) else {
            continue;
        };
        let alias = match words.get(i + 2) {
            Some(a) if a.eq_ignore_ascii_case("AS") => words.get(i + 3),
            other => other,
        };
        if alias == Some(&name) {
            return table;
        }
    }
    name
}

#[test]
fn aliases_are_resolved_to_their_tables() {
    let sql = "SELECT a.id FROM assignments a JOIN users AS u ON u.id = a.user_id";
    assert_eq!(table_of(sql, "a"), "assignments");
    assert_eq!(table_of(sql, "u"), "users");
    assert_eq!(table_of(sql, "requests"), "requests");
}

#[test]
fn hot_commands_never_scan_a_growing_table() {
    if support::on_postgres() {
        // The plans checked are SQLite's; PostgreSQL's are measured by the benchmark.
        return;
    }
    let env = Env::new();
    let policy = Policy::new()
        .role(
            "db-admin",
            "Database Administrator",
            &["max_activation = \"2h\""],
        )
        .role(
            "ops",
            "Operations",
            &[
                "max_activation = \"2h\"",
                "require_mfa = false",
                "require_approval = true",
                "approvers = [\"admin\"]",
            ],
        );
    let admin = env.init_with(&policy);
    let bob = env.user("bob");
    env.user("carol");
    let mut rows = String::from("user,role,scope,type,start,end,justification,ticket\n");
    for who in ["bob", "carol"] {
        for s in 0..20 {
            rows.push_str(&format!("{who},db-admin,/team{s},eligible,,,bench,\n"));
        }
        rows.push_str(&format!("{who},ops,/,eligible,,,bench,\n"));
    }
    std::fs::write(env.path("rows.csv"), rows).unwrap();
    env.as_("admin", &["assignment", "import", "rows.csv"])
        .expect(0);
    let more =
        "user,role,scope,type,start,end,justification,ticket\nbob,db-admin,/new,eligible,,,x,\n";
    std::fs::write(env.path("more.csv"), more).unwrap();

    let code = oathtool(&bob, 0);
    let mut found = Vec::new();
    let mut run = |name: &str, args: &[&str], exit: i32| {
        for scan in scans(&env, name, args, exit) {
            found.push(format!("{name}: {scan}"));
        }
    };
    run(
        "check",
        &["check", "bob", "db-admin", "--scope", "/team3"],
        1,
    );
    run(
        "activate",
        &[
            "--as", "bob", "activate", "db-admin", "--scope", "/team3", "-j", "INC-1", "--code",
            &code,
        ],
        0,
    );
    run(
        "check-held",
        &["check", "bob", "db-admin", "--scope", "/team3"],
        0,
    );
    run("status", &["--as", "bob", "status"], 0);
    run("status-short", &["--as", "bob", "status", "--short"], 0);
    run(
        "assignment-list",
        &[
            "--as",
            "admin",
            "assignment",
            "list",
            "--user",
            "bob",
            "--json",
        ],
        0,
    );
    run("request-list", &["--as", "bob", "request", "list"], 0);
    run(
        "request-ops",
        &["--as", "bob", "activate", "ops", "-j", "INC-2"],
        0,
    );
    run(
        "approve",
        &[
            "--as",
            "admin",
            "approve",
            "2",
            "-j",
            "ok",
            "--code",
            &oathtool(&admin, 0),
        ],
        0,
    );
    run(
        "deactivate",
        &["--as", "bob", "deactivate", "db-admin", "--scope", "/team3"],
        0,
    );
    run(
        "import",
        &["--as", "admin", "assignment", "import", "more.csv"],
        0,
    );
    run("whoami", &["--as", "bob", "whoami"], 0);
    run("role-list", &["--as", "admin", "role", "list"], 0);
    run("requests-all", &["--as", "admin", "request", "list"], 0);
    run(
        "requests-pending",
        &["--as", "admin", "request", "list", "--pending"],
        0,
    );
    run("sweep", &["--as", "admin", "sweep"], 0);
    assert!(found.is_empty(), "full scans:\n{}", found.join("\n"));
    // The statement `name` ran that `is` picks out goes through `index`.
    let uses = |name: &str, what: &str, is: &dyn Fn(&str) -> bool, index: &str| {
        let plans = std::fs::read_to_string(env.path(&format!("plans-{name}.txt"))).unwrap();
        let line = plans
            .lines()
            .find(|l| is(l))
            .unwrap_or_else(|| panic!("{name} {what}"));
        assert!(line.contains(&format!("USING INDEX {index}")), "{line}");
    };
    // Its eligible holders: the counts kept, less those whose counted eligibilities are all
    // outside now, found through the indexes of the few.
    let plans = std::fs::read_to_string(env.path("plans-role-list.txt")).unwrap();
    assert!(
        plans.lines().any(|l| l.contains("FROM role_counts")
            && l.ends_with("SEARCH role_counts USING PRIMARY KEY (role=?)")),
        "role list reads the counts kept by their key:\n{plans}"
    );
    uses(
        "role-list",
        "takes off those not started or ended",
        &|l| l.contains("a.start_at > ?1"),
        "assignments_scheduled (start_at>?)",
    );
    uses(
        "role-list",
        "takes off those not started or ended",
        &|l| l.contains("a.end_at <= ?1"),
        "assignments_expiring (end_at<?)",
    );
    // Its active holders come from the few active assignments alone, not from a second
    // read of every assignment.
    uses(
        "role-list",
        "counts the active holders",
        &|l| l.contains("SELECT h.role, count(*)") && l.contains("a.kind = 'active'"),
        "assignments_active (role=?)",
    );
    // A user's eligibilities for a role come through the index by user, not through one that
    // holds every holder of the role (an index on role and kind did that).
    uses(
        "activate",
        "reads the user's eligibilities",
        &|l| l.starts_with("SELECT id, scope, end_at FROM assignments WHERE user_id = ?1"),
        "assignments_by_user (user_id=?)",
    );
    // An import's lookup of each row's assignment goes through the index keyed by role and
    // scope first, where rows of one role and scope lie side by side whoever they are for,
    // not through one keyed by user first (a leaf of its own for each user's row).
    uses(
        "import",
        "looks up each row's assignment",
        &|l| l.contains("a.user_id = ?1 AND a.role = ?2 AND a.scope = ?3 AND a.kind = ?4"),
        "assignments_by_grant (role=? AND scope=? AND user_id=? AND kind=?)",
    );
    // The sweep's batches of ended assignments read only those not yet written down: an
    // index that also held the written ones made each batch read past all of them.
    uses(
        "sweep",
        "looks for ended assignments",
        &|l| l.contains("a.expiry_recorded = 0"),
        "assignments_expiring",
    );
    // `pim doctor` checks the counts with one read of the counted eligibilities, tallied by
    // (role, user) pair in memory: no statement of it sorts the assignments (a GROUP BY by
    // role and user did, through a temporary B-tree of every one: 62 MB at 1,000,000).
    let file = env.path("plans-doctor.txt");
    let out = env
        .command(&["--as", "admin", "doctor"])
        .env("PIM_TEST_PLANS", &file)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plans = std::fs::read_to_string(&file).unwrap();
    assert!(
        plans
            .lines()
            .any(|l| l.starts_with("SELECT role, user_id FROM assignments")),
        "doctor reads the counted eligibilities:\n{plans}"
    );
    let sorted: Vec<&str> = plans
        .lines()
        .filter(|l| l.contains("FROM assignments") && l.contains("TEMP B-TREE"))
        .collect();
    assert!(sorted.is_empty(), "{sorted:#?}");
}

/// Every statement `args` ran as `who`, once each time it ran (exit 0 expected).
fn statements_run(env: &Env, name: &str, who: &str, args: &[&str]) -> Vec<String> {
    let file = env.path(&format!("runs-{name}.txt"));
    let _ = std::fs::remove_file(&file);
    let mut all = vec!["--as", who];
    all.extend_from_slice(args);
    let out = env
        .command(&all)
        .env("PIM_TEST_RUNS", &file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    if support::on_postgres() {
        // Only SQLite's statements are written down.
        return Vec::new();
    }
    assert!(!text.is_empty(), "{name}: no statement was written down");
    // A multi-row INSERT is one statement however many rows it has.
    text.lines()
        .map(|sql| match sql.split_once(" VALUES (") {
            Some((insert, _)) => format!("{insert} VALUES (...)"),
            None => sql.to_string(),
        })
        .collect()
}

/// No list runs a query for each row it lists (the "no N+1 query loops"): each list
/// command runs exactly as many statements with four users' requests, eligibilities and
/// events as with one. Among them an approver's view of everyone's requests, which asked
/// for the approver's holdings once a request, and the requests an approver may decide,
/// which also asked once a request whether the approver had decided it already.
#[test]
fn list_commands_run_as_many_statements_however_many_rows_they_list() {
    // The statements counted are SQLite's (the code that loops is the same on both); on
    // PostgreSQL what the lists show is checked.
    let env = Env::new();
    let policy = Policy::new()
        .role(
            "db-admin",
            "Database Administrator",
            &[
                "max_activation = \"2h\"",
                "require_mfa = false",
                "require_approval = true",
                "min_approvals = 2",
            ],
        )
        .role(
            "approver",
            "Approver",
            &[
                "permissions = [\"approve\"]",
                "require_approval = false",
                "max_active = \"permanent\"",
            ],
        );
    env.init_with(&policy);
    let carol = env.user("carol");
    env.as_(
        "admin",
        &[
            "assign",
            "carol",
            "approver",
            "--active",
            "--scope",
            "/prod",
            "--permanent",
            "-j",
            "lead",
        ],
    )
    .expect(0);
    // Each new user: eligible at /prod (carol may decide there) and /dev (she may not), a
    // request pending at each.
    let grow = |from: usize, to: usize| {
        for i in from..to {
            let who = format!("u{i}");
            env.as_("admin", &["user", "add", &who]).expect(0);
            for scope in ["/prod", "/dev"] {
                env.as_(
                    "admin",
                    &[
                        "assign", &who, "db-admin", "--scope", scope, "-j", "on call",
                    ],
                )
                .expect(0);
                env.as_(
                    &who,
                    &["activate", "db-admin", "--scope", scope, "-j", "INC-1"],
                )
                .expect(0);
            }
            // A review of /prod by its holders themselves, and one by carol.
            for how in [&["--self"][..], &["--reviewer", "carol"]] {
                let name = format!("r{i}-{}", how.len());
                let mut args = vec!["review", "create", "--role", "db-admin", "--scope", "/prod"];
                args.extend_from_slice(how);
                args.extend_from_slice(&["--name", &name]);
                env.as_("admin", &args).expect(0);
            }
        }
    };
    let lists: [(&str, &str, &[&str]); 13] = [
        ("carol-all", "carol", &["request", "list", "--all"]),
        ("carol-pending", "carol", &["request", "list", "--pending"]),
        ("admin-all", "admin", &["request", "list", "--all"]),
        ("assignments", "admin", &["assignment", "list"]),
        ("users", "admin", &["user", "list"]),
        ("roles", "admin", &["role", "list"]),
        ("alerts", "admin", &["alerts"]),
        ("notifications", "admin", &["notification", "list"]),
        ("reviews", "admin", &["review", "list"]),
        ("reviews-own", "u0", &["review", "list"]),
        ("reviews-carol", "carol", &["review", "list"]),
        ("audit", "admin", &["audit", "list", "--limit", "5"]),
        // Not a list, but it writes an item for each holder: their facts are read, and the
        // items written, for all of them at once.
        (
            "review-create",
            "admin",
            &[
                "review", "create", "--role", "db-admin", "--scope", "/", "--self", "--name",
                "counted",
            ],
        ),
    ];
    let count = |runs: &[String]| {
        let mut n = std::collections::BTreeMap::new();
        for sql in runs {
            *n.entry(sql.clone()).or_insert(0) += 1;
        }
        n
    };
    grow(0, 1);
    // carol has decided one request already: it is not among those she may decide.
    env.as_(
        "carol",
        &[
            "approve",
            "1",
            "-j",
            "looked at it",
            "--code",
            &oathtool(&carol, 0),
        ],
    )
    .expect(0);
    let before: Vec<_> = lists
        .iter()
        .map(|(name, who, args)| count(&statements_run(&env, name, who, args)))
        .collect();
    grow(1, 4);
    let mut grew = Vec::new();
    for ((name, who, args), before) in lists.iter().zip(&before) {
        let after = count(&statements_run(&env, name, who, args));
        for (sql, n) in &after {
            let was = before.get(sql).copied().unwrap_or(0);
            if *n != was {
                grew.push(format!("{name}: {was} -> {n} times: {sql}"));
            }
        }
    }
    assert!(
        grew.is_empty(),
        "statements run once a row:\n{}",
        grew.join("\n")
    );
    // What the lists show did grow (the test would prove nothing otherwise).
    let pending = env
        .as_("carol", &["request", "list", "--pending", "--json"])
        .expect(0)
        .json();
    let ids: Vec<i64> = pending
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    // u0..u3's requests at /prod are 1, 3, 5, 7; carol decided 1.
    assert_eq!(ids, [3, 5, 7], "{pending}");
    let all = env
        .as_("carol", &["request", "list", "--all", "--json"])
        .expect(0)
        .json();
    assert_eq!(all.as_array().unwrap().len(), 4, "{all}");
    // u0 sees the self-reviews (their own item in each: the first has only u0, the last
    // all four), carol those she reviews (all items).
    let progress = |who: &str| -> Vec<String> {
        let list = env.as_(who, &["review", "list", "--json"]).expect(0).json();
        list.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["name"] != "counted")
            .map(|r| {
                format!(
                    "{} {}/{}",
                    r["name"].as_str().unwrap(),
                    r["decided"],
                    r["total"]
                )
            })
            .collect()
    };
    assert_eq!(
        progress("u0"),
        ["r0-1 0/1", "r1-1 0/1", "r2-1 0/1", "r3-1 0/1"]
    );
    assert_eq!(
        progress("carol"),
        ["r0-2 0/1", "r1-2 0/2", "r2-2 0/3", "r3-2 0/4"]
    );
    // The last review made: an item for each of the eight eligibilities, each user's
    // recommendation (all new).
    let last = env
        .as_("admin", &["review", "list", "--json"])
        .expect(0)
        .json();
    let id = last.as_array().unwrap().last().unwrap()["id"].to_string();
    let shown = env
        .as_("admin", &["review", "show", &id, "--json"])
        .expect(0)
        .json();
    let items = shown["items"].as_array().unwrap();
    assert_eq!(items.len(), 8, "{shown}");
    assert!(
        items.iter().all(|i| i["recommendation"] == "keep"
            && i["reason"]
                .as_str()
                .unwrap()
                .starts_with("new: assigned 0 day(s) ago")),
        "{shown}"
    );
}
