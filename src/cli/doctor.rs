//! `pim whoami` (who pim takes you to be, and what you hold) and `pim doctor` (the health
//! of the install, each problem with the command that fixes it).

use super::context::{real_user, Ctx};
use super::output::{json, out, table, when};
use crate::privilege;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Serialize)]
struct WhoAmI {
    os_account: String,
    uid: u32,
    principal: String,
    /// `os account`, or `--as/PIM_USER` when another principal was asked for.
    principal_from: &'static str,
    database: String,
    backend: &'static str,
    installed: bool,
    user: Option<crate::ops::User>,
    active: Vec<crate::ops::ActiveRole>,
}

pub fn run_whoami(ctx: &Ctx) -> anyhow::Result<i32> {
    let os = real_user()?;
    let (pim, actor) = ctx.open()?;
    let user = pim.user(&actor).ok();
    let active = match &user {
        Some(_) => pim.status(&actor)?.active,
        None => Vec::new(),
    };
    let me = WhoAmI {
        os_account: os.clone(),
        uid: privilege::real_uid(),
        principal_from: if actor == os {
            "os account"
        } else {
            "--as/PIM_USER"
        },
        principal: actor.clone(),
        database: ctx.db.display().to_string(),
        backend: if ctx.server.is_some() {
            "postgresql"
        } else {
            "sqlite"
        },
        installed: ctx.installed(),
        user,
        active,
    };
    if ctx.json {
        json(&me)?;
        return Ok(0);
    }
    let now = pim.now();
    let mut lines = vec![
        format!("OS account:  {} (uid {})", me.os_account, me.uid),
        format!(
            "Principal:   {}{}",
            me.principal,
            if me.principal_from == "os account" {
                " (your OS account)".to_string()
            } else {
                " (from --as or PIM_USER)".to_string()
            }
        ),
        format!(
            "Database:    {} ({}{})",
            me.database,
            me.backend,
            if me.installed {
                ", the installed store"
            } else {
                ""
            }
        ),
    ];
    match &me.user {
        None => lines.push(format!(
            "'{}' is not a pim user. Act as one with --as NAME (or PIM_USER=NAME; root and the database's owner may), or ask an administrator to run `pim user add {}`.",
            me.principal, me.principal
        )),
        Some(u) => {
            let mfa = if u.kind == "service" {
                "a service: signs in with its token, never with TOTP".to_string()
            } else if u.mfa_blocked {
                format!("locked until an administrator runs `pim mfa reset {}`", u.name)
            } else if let Some(until) = u.mfa_locked_until.filter(|&t| t > now.timestamp()) {
                format!("locked until {}", when(Some(until), now))
            } else if u.mfa_enrolled {
                "enrolled".to_string()
            } else {
                "not enrolled: run `pim mfa enroll`".to_string()
            };
            lines.push(format!("MFA:         {mfa}"));
            if u.disabled {
                lines.push("Account:     disabled (it holds nothing)".to_string());
            }
            if me.active.is_empty() {
                lines.push("Active roles: none (see `pim activate`)".to_string());
            } else {
                lines.push("Active roles:".to_string());
                for h in &me.active {
                    lines.push(format!(
                        "  {} at {}, {}",
                        h.role,
                        h.scope,
                        match h.until_at {
                            Some(_) => format!("until {}", when(h.until_at, now)),
                            None => "permanent".to_string(),
                        }
                    ));
                }
            }
        }
    }
    out(&lines.join("\n"))?;
    Ok(0)
}

/// One finding of `pim doctor`.
#[derive(Debug, Serialize)]
struct Finding {
    check: &'static str,
    /// `ok`, `warning` or `problem`.
    state: &'static str,
    detail: String,
    /// The command (or step) that fixes it.
    fix: Option<String>,
}

fn finding(
    check: &'static str,
    state: &'static str,
    detail: String,
    fix: Option<String>,
) -> Finding {
    Finding {
        check,
        state,
        detail,
        fix,
    }
}

/// The mode of a file as `0640`, with its owner and group ids.
fn mode(meta: &std::fs::Metadata) -> String {
    format!(
        "{:04o} uid {} gid {}",
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid()
    )
}

/// Whether `host:port` takes a TCP connection within two seconds.
fn reachable(host: &str, port: u16) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?;
    let mut last = format!("{host}: no address");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(last)
}

/// Host and port of an http(s) URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let default = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(default), |p| p.parse().ok())?;
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
}

/// Whether a program can be run: an absolute path that is an executable file, or a name
/// found on PATH.
fn runnable(program: &str) -> bool {
    let ok = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if program.contains('/') {
        return ok(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| ok(&d.join(program))))
}

pub fn run_doctor(ctx: &Ctx) -> anyhow::Result<i32> {
    let mut found = Vec::new();
    // The database first: without one, nothing else can be looked at.
    if ctx.server.is_none() && std::fs::symlink_metadata(&ctx.db).is_err() {
        found.push(finding(
            "database",
            "problem",
            format!("there is no database at {}", ctx.db.display()),
            Some("pim init --admin NAME (or name another with --db / PIM_DB)".to_string()),
        ));
        return report(ctx, &found);
    }
    let (pim, actor) = match ctx.open() {
        Ok(opened) => opened,
        // pim refused the database, or could not open it: say why (other refusals, such as
        // an `--as` not allowed, stay what they are).
        Err(e)
            if matches!(
                e.downcast_ref::<crate::error::Error>(),
                Some(crate::error::Error::Environment(_))
            ) =>
        {
            found.extend(unopened(ctx, &e));
            return report(ctx, &found);
        }
        Err(e) => return Err(e),
    };
    let health = pim.health()?;
    let installed = ctx.installed();
    found.push(finding(
        "database",
        "ok",
        format!(
            "{} ({}, instance {})",
            ctx.db.display(),
            health.backend,
            health.instance
        ),
        None,
    ));
    if ctx.server.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let path = std::path::PathBuf::from(format!("{}{suffix}", ctx.db.display()));
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let open_to_others = meta.mode() & 0o007 != 0;
            let group_ok = installed || meta.mode() & 0o070 == 0;
            if open_to_others || !group_ok {
                found.push(finding(
                    "permissions",
                    "problem",
                    format!(
                        "{} is {}: others can read or change the audit log and secrets",
                        path.display(),
                        mode(&meta)
                    ),
                    Some({
                        let p = crate::text::shell_word(&path);
                        if installed {
                            format!("chgrp pim {p} && chmod 0660 {p}")
                        } else {
                            format!("chmod 0600 {p}")
                        }
                    }),
                ));
            } else if suffix.is_empty() {
                found.push(finding(
                    "permissions",
                    "ok",
                    format!("{} is {}", path.display(), mode(&meta)),
                    None,
                ));
            }
        }
    }
    found.push(if privilege::is_setgid() {
        finding(
            "install",
            "ok",
            format!(
                "set-group-id pim{}: the database is a boundary callers cannot cross",
                if installed {
                    ", on the installed database"
                } else {
                    ", but this database is a personal one"
                }
            ),
            None,
        )
    } else {
        finding(
            "install",
            "warning",
            "a personal pim: whoever can write the database can change anything in it".to_string(),
            Some(
                "for a team, install set-group-id (README: \"Installing it as a boundary\")"
                    .to_string(),
            ),
        )
    });
    found.push(if health.schema == health.schema_known {
        finding(
            "schema",
            "ok",
            format!("version {} (current)", health.schema),
            None,
        )
    } else {
        finding(
            "schema",
            "problem",
            format!(
                "version {} but this pim knows {}",
                health.schema, health.schema_known
            ),
            Some("upgrade pim".to_string()),
        )
    });
    // The counts `role list` shows, against the assignments (a write the triggers did not
    // see: direct SQL with a trigger dropped, or a bug).
    let drift = pim.count_drift()?;
    found.push(if drift.is_empty() {
        finding(
            "counts",
            "ok",
            "the eligible holders `role list` shows agree with the assignments".to_string(),
            None,
        )
    } else {
        let roles: Vec<String> = drift
            .roles
            .iter()
            .map(|r| format!("{} {} kept, {} counted", r.role, r.kept, r.counted))
            .collect();
        finding(
            "counts",
            "problem",
            format!(
                "the eligible holders `role list` shows disagree with the assignments ({} role-user pair(s) off{}{}): were the assignments changed outside pim?",
                drift.pairs,
                if roles.is_empty() { "" } else { "; " },
                roles.join(", ")
            ),
            Some(if ctx.server.is_some() {
                "pim store recount, with the owner's URL in --db (then `pim audit verify`)".to_string()
            } else {
                "pim store recount (then `pim audit verify`)".to_string()
            }),
        )
    });
    // The sweep: work it should have written down, and a timer that runs it.
    let timer = [
        "/etc/systemd/system/pim-sweep.timer",
        "/lib/systemd/system/pim-sweep.timer",
        "/etc/cron.d/pim-sweep",
        "/etc/cron.d/pim",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    let now = pim.now();
    // A sweep written down ahead of this host's clock: a clock is wrong here or where it
    // ran (expiries, TOTP codes and the audit's times all read it).
    if let Some(l) = health.last_sweep.filter(|&l| l > now.timestamp() + 5 * 60) {
        found.push(finding(
            "clock",
            "warning",
            format!(
                "the last sweep is recorded at {}, {} ahead of this host's clock: this clock, or the one of the host that swept, is wrong",
                if chrono::DateTime::from_timestamp(l, 0).is_some() {
                    when(Some(l), now)
                } else {
                    "a time no clock reads".to_string()
                },
                crate::time::format_duration(chrono::Duration::try_seconds(l.saturating_sub(now.timestamp())).unwrap_or(chrono::Duration::MAX))
            ),
            Some("timedatectl status (on every host that runs pim: NTP on, and the same time)".to_string()),
        ));
    }
    if health.unrecorded_expiries > 0 {
        found.push(finding(
            "sweep",
            "problem",
            format!(
                "{} activation(s) ended (the first {}) and are not in the audit log yet: the sweep does not run",
                health.unrecorded_expiries,
                when(health.oldest_unrecorded, now)
            ),
            Some("pim sweep, then: cp examples/systemd/pim-sweep.* /etc/systemd/system/ && systemctl enable --now pim-sweep.timer".to_string()),
        ));
    } else {
        let install = "cp examples/systemd/pim-sweep.* /etc/systemd/system/ && systemctl enable --now pim-sweep.timer";
        // The timer runs it every 5 minutes; a quarter of an hour without one is a sweep
        // that does not run.
        let recent = health
            .last_sweep
            .is_some_and(|l| (now.timestamp() - 15 * 60..=now.timestamp() + 5 * 60).contains(&l));
        let last = match health.last_sweep {
            Some(l) => format!("last run {}", when(Some(l), now)),
            None => "never run".to_string(),
        };
        found.push(match (timer, recent) {
            (true, true) => finding("sweep", "ok", format!("timer installed, {last}, nothing overdue"), None),
            (false, true) => finding(
                "sweep",
                "ok",
                format!("{last} (no timer on this host: it runs elsewhere), nothing overdue"),
                None,
            ),
            (true, false) => finding(
                "sweep",
                "warning",
                format!("timer installed but the sweep has {last}; nothing is overdue yet"),
                Some("systemctl status pim-sweep.timer pim-sweep.service".to_string()),
            ),
            (false, false) => finding(
                "sweep",
                "warning",
                format!("no pim-sweep timer (or /etc/cron.d/pim-sweep) found, {last}; nothing is overdue yet"),
                Some(install.to_string()),
            ),
        });
    }
    // Notification channels.
    let policy = pim.policy()?;
    let n = &policy.notifications;
    if let Some(w) = &n.webhook {
        found.push(
            match host_port(&w.url).map(|(h, p)| (reachable(&h, p), h, p)) {
                Some((Ok(()), h, p)) => finding("webhook", "ok", format!("{h}:{p} answers"), None),
                Some((Err(e), _, _)) => finding(
                    "webhook",
                    "problem",
                    format!("cannot connect: {e}"),
                    Some(
                        "fix [notifications.webhook] url, then `pim policy apply FILE`".to_string(),
                    ),
                ),
                None => finding(
                    "webhook",
                    "problem",
                    "its URL has no host".to_string(),
                    Some(
                        "fix [notifications.webhook] url, then `pim policy apply FILE`".to_string(),
                    ),
                ),
            },
        );
    }
    if let Some(s) = &n.smtp {
        found.push(match reachable(&s.host, s.port) {
            Ok(()) => finding("smtp", "ok", format!("{}:{} answers", s.host, s.port), None),
            Err(e) => finding(
                "smtp",
                "problem",
                format!("cannot connect: {e}"),
                Some(
                    "fix [notifications.smtp] host/port, then `pim policy apply FILE`".to_string(),
                ),
            ),
        });
    }
    if let Some(c) = &n.command {
        let program = c.argv.first().map(String::as_str).unwrap_or("");
        found.push(if runnable(program) {
            finding("command", "ok", format!("{program} can be run"), None)
        } else {
            finding(
                "command",
                "problem",
                format!("{program} is not an executable file or on PATH"),
                Some("fix [notifications.command], then `pim policy apply FILE`".to_string()),
            )
        });
    }
    if health.notifications_failed > 0 {
        found.push(finding(
            "notifications",
            "warning",
            format!(
                "{} notification(s) failed for good",
                health.notifications_failed
            ),
            Some("pim notification list --failed".to_string()),
        ));
    }
    // Witnesses of the log.
    found.push(if !health.witnesses {
        finding(
            "witnesses",
            "warning",
            "no [witness] section: whoever can write the database could rewrite the log unnoticed".to_string(),
            Some("add a [witness] file, command or webhook out of the owner's reach (README: \"Proofs: signed checkpoints and receipts\")".to_string()),
        )
    } else if health.witnessed < health.log_size {
        finding(
            "witnesses",
            "warning",
            format!(
                "{} event(s) not yet in a checkpoint given to the witnesses",
                health.log_size - health.witnessed
            ),
            Some("pim sweep".to_string()),
        )
    } else {
        finding("witnesses", "ok", format!("checkpoint of {} events published", health.witnessed), None)
    });
    // The key of the secrets (and of the checkpoints' signatures).
    let key = pim.vault().path().to_path_buf();
    found.push(match std::fs::symlink_metadata(&key) {
        // No key was looked for: the message says why, and what to do.
        _ if pim.vault().withheld().is_some() => finding(
            "key",
            "problem",
            pim.vault().withheld().unwrap_or_default().to_string(),
            None,
        ),
        Err(_) => finding(
            "key",
            "warning",
            format!(
                "no key file at {} (made when a first secret is sealed)",
                key.display()
            ),
            None,
        ),
        Ok(meta) if meta.mode() & 0o007 != 0 || (!installed && meta.mode() & 0o070 != 0) => {
            finding(
                "key",
                "problem",
                format!(
                    "{} is {}: others can read the key of every TOTP secret",
                    key.display(),
                    mode(&meta)
                ),
                Some({
                    let k = crate::text::shell_word(&key);
                    if installed {
                        format!("chgrp pim {k} && chmod 0640 {k}")
                    } else {
                        format!("chmod 0600 {k}")
                    }
                }),
            )
        }
        Ok(meta) => finding(
            "key",
            "ok",
            format!("{} is {}", key.display(), mode(&meta)),
            None,
        ),
    });
    // You.
    found.push(match pim.user(&actor) {
        Err(_) => finding(
            "you",
            "warning",
            format!("'{actor}' is not a pim user"),
            Some(format!(
                "act as one with --as NAME, or `pim user add {actor}` (see `pim whoami`)"
            )),
        ),
        Ok(u) if u.kind != "service" && !u.mfa_enrolled => finding(
            "you",
            "warning",
            format!("{} has no authenticator", u.name),
            Some("pim mfa enroll".to_string()),
        ),
        Ok(u) => finding("you", "ok", format!("{} ({})", u.name, u.kind), None),
    });
    report(ctx, &found)
}

/// What keeps pim from opening the database, as findings: for a database file of the
/// caller's, everything that lets others put pages into it, each with its fix (pim refuses
/// on the first); otherwise the refusal itself.
fn unopened(ctx: &Ctx, e: &anyhow::Error) -> Vec<Finding> {
    let risks = if ctx.server.is_none() && !crate::privilege::is_setgid() {
        crate::store::placement_risks(&ctx.db).unwrap_or_default()
    } else {
        Vec::new()
    };
    if risks.is_empty() {
        return vec![finding(
            "database",
            "problem",
            format!("pim cannot open it: {e}"),
            None,
        )];
    }
    risks
        .into_iter()
        .map(|r| {
            finding(
                "database",
                "problem",
                format!("{} refused: {}", ctx.db.display(), r.why),
                Some(r.fix),
            )
        })
        .collect()
}

/// The findings as a table (or JSON); exit 1 when any is a problem.
fn report(ctx: &Ctx, found: &[Finding]) -> anyhow::Result<i32> {
    if ctx.json {
        json(found)?;
    } else {
        let mut t = table(&["check", "state", "detail"]);
        for f in found {
            t.add_row(vec![
                f.check.to_string(),
                f.state.to_string(),
                f.detail.clone(),
            ]);
        }
        let mut text = t.to_string();
        let fixes: Vec<String> = found
            .iter()
            .filter_map(|f| {
                f.fix
                    .as_ref()
                    .map(|fix| format!("  {}: {}", f.check, super::output::safe(fix)))
            })
            .collect();
        if !fixes.is_empty() {
            text.push_str("\nTo fix:\n");
            text.push_str(&fixes.join("\n"));
        }
        out(&text)?;
    }
    Ok(if found.iter().any(|f| f.state == "problem") {
        1
    } else {
        0
    })
}
