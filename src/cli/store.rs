//! `pim store`: the database itself (moving a team from a SQLite file to PostgreSQL).

use super::context::Ctx;
use super::output::{json, out, safe, say, table};
use crate::store;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a SQLite database into an empty PostgreSQL database, ids and audit chain intact
    Copy {
        /// The SQLite database to copy (read with your own rights)
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// The PostgreSQL database to copy into: postgres://USER@HOST/DATABASE (must hold
        /// no pim database)
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Let your key of the database in --db (a PostgreSQL server) be used for that server:
    /// its TOTP secrets, signed checkpoints and receipts. pim uses a key for a server only
    /// where it is bound to it (`pim init` and `pim store copy` bind it), since any server
    /// can name your database's instance id
    BindKey,
    /// Grant ROLE what pim needs at run time on a PostgreSQL database, and no UPDATE or
    /// DELETE on the audit log (run it with the owner's URL in --db)
    Grant {
        /// The runtime role, which the installed configuration's URL names
        role: String,
        /// Print the statements instead of running them
        #[arg(long)]
        print: bool,
    },
    /// Count each role's eligible holders again from the assignments, if the counts `role
    /// list` shows disagree with them (`pim doctor` tells); permission `policy`, audited. On
    /// PostgreSQL only the owner of the tables may: give the owner's URL in --db (the runtime
    /// role is refused, exit 3)
    Recount,
}

pub fn run(ctx: &Ctx, cmd: StoreCommand) -> anyhow::Result<i32> {
    match cmd {
        StoreCommand::Copy { from, to } => {
            if crate::privilege::is_setgid() && crate::privilege::real_uid() != 0 {
                return Err(crate::Error::Refused(
                    "`pim store copy` through the installed (set-group-id) pim is for root; use a pim binary of your own."
                        .to_string(),
                )
                .into());
            }
            let copied = store::copy::copy(&from, &to)?;
            // The caller's key of their own file now also serves the server they copied it
            // to (another account's file could carry any instance id: its key is not bound).
            let bound = if copied.yours {
                crate::vault::bind(&copied.instance, &store::pg::identity(&to)?)?
            } else {
                None
            };
            let key = bound.map(|(path, _)| path.display().to_string());
            if ctx.json {
                json(&serde_json::json!({
                    "from": from.display().to_string(),
                    "to": store::pg::describe(&to),
                    "rows": copied.rows.iter().map(|(t, n)| (t.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                    "events": copied.events,
                    "head": copied.head,
                    "key": key,
                }))?;
            } else {
                let mut t = table(&["table", "rows"]);
                for (name, n) in &copied.rows {
                    t.add_row([name.clone(), n.to_string()]);
                }
                out(&format!(
                    "Copied {} to {}.\n{t}\nThe audit chain holds on both: {} events, head {}.",
                    from.display(),
                    store::pg::describe(&to),
                    copied.events,
                    copied.head
                ))?;
                if let Some(path) = key {
                    say(&format!(
                        "Your key {} is bound to the server too.",
                        safe(&path)
                    ))?;
                }
            }
            Ok(0)
        }
        StoreCommand::BindKey => {
            if crate::privilege::is_setgid() && crate::privilege::real_uid() != 0 {
                return Err(crate::Error::Refused(
                    "`pim store bind-key` through the installed (set-group-id) pim is for root; use a pim binary of your own."
                        .to_string(),
                )
                .into());
            }
            let url = match &ctx.server {
                Some((url, false)) => url,
                Some((_, true)) => {
                    return Err(crate::Error::Usage(
                        "The installed server needs no binding: its key is /etc/pim/keys's, for the server root's configuration names.".to_string(),
                    )
                    .into())
                }
                None => {
                    return Err(crate::Error::Usage(
                        "`pim store bind-key` is for a PostgreSQL database: name it with --db postgres://USER@HOST/DATABASE.".to_string(),
                    )
                    .into())
                }
            };
            let server = store::pg::identity(url)?;
            let instance = store::pg::open(url, false)?.conn.instance()?;
            let Some((path, already)) = crate::vault::bind(&instance, &server)? else {
                return Err(crate::Error::NotFound(format!(
                    "You have no key of the database at {} (its instance id is {instance}): copy it from the key's backup into {} first.",
                    ctx.db.display(),
                    crate::vault::key_paths(&instance, false)[0].display()
                ))
                .into());
            };
            if ctx.json {
                json(&serde_json::json!({
                    "key": path.display().to_string(),
                    "server": server,
                    "bound": true,
                    "already": already,
                }))?;
            } else {
                say(&format!(
                    "The key {} {} the server {}.",
                    safe(&path.display().to_string()),
                    if already {
                        "was already bound to"
                    } else {
                        "is now bound to"
                    },
                    safe(&server)
                ))?;
            }
            Ok(0)
        }
        StoreCommand::Grant { role, print } => {
            if print {
                out(&store::pg::grants(&role)?)?;
                return Ok(0);
            }
            // The installed server's URL is root's: nobody else changes its roles through it.
            if crate::privilege::is_setgid() && crate::privilege::real_uid() != 0 {
                return Err(crate::Error::Refused(
                    "`pim store grant` through the installed (set-group-id) pim is for root."
                        .to_string(),
                )
                .into());
            }
            let Some((url, _)) = &ctx.server else {
                return Err(crate::Error::Usage(
                    "`pim store grant` is for a PostgreSQL database: name it with --db postgres://OWNER@HOST/DATABASE."
                        .to_string(),
                )
                .into());
            };
            let db = store::pg::open(url, false)?;
            store::pg::grant(&db.conn, &role)?;
            if ctx.json {
                json(&serde_json::json!({ "role": role, "granted": true }))?;
            } else {
                say(&format!(
                    "{role} may now run pim on {}: read and change every table, append to (never change) the audit log.",
                    ctx.db.display()
                ))?;
            }
            Ok(0)
        }
        StoreCommand::Recount => {
            let (mut pim, actor) = ctx.open()?;
            let done = pim.recount(&actor)?;
            if ctx.json {
                json(&done)?;
            } else if !done.recounted {
                out("The counts of eligible holders agree with the assignments: nothing changed.")?;
            } else {
                let mut lines = vec![format!(
                    "Counted again from the assignments ({} role-user pair(s) were off):",
                    done.drift.pairs
                )];
                for r in &done.drift.roles {
                    lines.push(format!(
                        "  {}: {} eligible (was {})",
                        safe(&r.role),
                        r.counted,
                        r.kept
                    ));
                }
                out(&lines.join("\n"))?;
            }
            Ok(0)
        }
    }
}
