//! `pim store`: the database itself (moving a team from a SQLite file to PostgreSQL).

use super::context::Ctx;
use super::output::{json, out, table};
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
}

pub fn run(ctx: &Ctx, cmd: StoreCommand) -> anyhow::Result<i32> {
    match cmd {
        StoreCommand::Copy { from, to } => {
            let copied = store::copy::copy(&from, &to)?;
            if ctx.json {
                json(&serde_json::json!({
                    "from": from.display().to_string(),
                    "to": store::pg::redact(&to),
                    "rows": copied.rows.iter().map(|(t, n)| (t.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                    "events": copied.events,
                    "head": copied.head,
                }))?;
            } else {
                let mut t = table(&["table", "rows"]);
                for (name, n) in &copied.rows {
                    t.add_row([name.clone(), n.to_string()]);
                }
                out(&format!(
                    "Copied {} to {}.\n{t}\nThe audit chain holds on both: {} events, head {}.",
                    from.display(),
                    store::pg::redact(&to),
                    copied.events,
                    copied.head
                ))?;
            }
            Ok(0)
        }
    }
}
