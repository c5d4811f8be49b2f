//! `pim review ...`: access reviews.

use super::context::Ctx;
use super::output::{json, out, say, table};
use crate::audit::spreadsheet_safe;
use crate::ops::{Review, ReviewInput};
use crate::scope::Scope;
use crate::time::parse_duration;
use clap::Subcommand;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// Start a review of every eligible and active assignment of ROLE at S and below
    /// (permission `review`)
    Create {
        /// The role whose assignments are reviewed
        #[arg(long, value_name = "ROLE")]
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::roles))]
        role: String,
        /// Review assignments at this scope and below
        #[arg(long, default_value = "/", value_name = "S")]
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::scopes))]
        scope: String,
        /// Who decides (repeat for several)
        #[arg(
            long = "reviewer",
            value_name = "U",
            required_unless_present = "self_review"
        )]
        reviewers: Vec<String>,
        /// Each user reviews their own access
        #[arg(long = "self", conflicts_with = "reviewers")]
        self_review: bool,
        /// How long it stays open (default 14d)
        #[arg(long, value_name = "D")]
        duration: Option<String>,
        /// What the undecided get when it completes
        #[arg(long, default_value = "recommendation", value_parser = ["keep", "remove", "recommendation"])]
        default: String,
        /// Start it again on this schedule
        #[arg(long, value_parser = ["weekly", "monthly", "quarterly", "semiannual", "annual"])]
        every: Option<String>,
        /// A name for people ("Q4 DBAs")
        #[arg(long, value_name = "N")]
        name: Option<String>,
    },
    /// Open and finished reviews with their progress
    List,
    /// One review: each assignment with its recommendation and decision
    Show {
        /// The review id
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::reviews))]
        id: i64,
    },
    /// Decide keep or remove for USER's assignments in the review
    Decide {
        /// The review id
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::reviews))]
        id: i64,
        /// Whose assignment
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
        user: String,
        /// keep or remove
        #[arg(value_parser = ["keep", "remove"])]
        decision: String,
        /// Why (required; asked for on a terminal)
        #[arg(short = 'j', long, value_name = "J")]
        justification: Option<String>,
    },
    /// Apply the decisions now (the creator, or a holder of `review`); on a terminal, shows
    /// what will be removed and asks first
    Complete {
        /// The review id
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::reviews))]
        id: i64,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// The review's results as spreadsheet-safe CSV
    Export {
        /// The review id
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::reviews))]
        id: i64,
        /// Write to FILE instead of stdout
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

fn show(ctx: &Ctx, r: &Review) -> anyhow::Result<()> {
    if ctx.json {
        return json(r);
    }
    // A review completed early ran until it was completed, not until its end.
    let (window, until) = match &r.completed {
        Some(at) => ("at", at),
        None => ("open until", &r.end),
    };
    say(&format!(
        "Review {} \"{}\": {} at {}, {} ({} of {} decided), {window} {}; default {}.",
        r.id,
        super::output::safe(&r.name),
        r.role,
        r.scope,
        r.state,
        r.decided,
        r.total,
        super::output::when(super::output::unix(until), chrono::Utc::now()),
        r.default
    ))?;
    let mut t = table(&[
        "user",
        "scope",
        "type",
        "recommendation",
        "why",
        "decision",
        "by",
        "applied",
        "result",
    ]);
    for i in &r.items {
        t.add_row(vec![
            i.user.clone(),
            i.scope.clone(),
            i.kind.to_string(),
            i.recommendation.clone(),
            i.reason.clone(),
            i.decision.clone().unwrap_or_default(),
            i.reviewer.clone().unwrap_or_default(),
            i.applied.clone().unwrap_or_default(),
            i.result.clone().unwrap_or_default(),
        ]);
    }
    out(&t.to_string())
}

pub fn run(ctx: &Ctx, cmd: ReviewCommand) -> anyhow::Result<i32> {
    let (mut pim, actor) = ctx.open()?;
    match cmd {
        ReviewCommand::Create {
            role,
            scope,
            reviewers,
            self_review,
            duration,
            default,
            every,
            name,
        } => {
            let input = ReviewInput {
                role,
                scope: Scope::parse(&scope)?,
                reviewers,
                self_review,
                duration: duration.as_deref().map(parse_duration).transpose()?,
                default,
                every,
                name,
            };
            let r = pim.create_review(&actor, input)?;
            show(ctx, &r)?;
        }
        ReviewCommand::List => {
            let list = pim.reviews_seen_by(&pim.viewer(&actor)?)?;
            if ctx.json {
                // Lists stay light: items are in `review show`.
                let light: Vec<serde_json::Value> = list
                    .iter()
                    .map(|r| {
                        serde_json::json!({"id": r.id, "name": r.name, "role": r.role, "scope": r.scope,
                            "state": r.state, "decided": r.decided, "total": r.total, "end": r.end, "every": r.every})
                    })
                    .collect();
                return json(&light).map(|_| 0);
            }
            let mut t = table(&[
                "id", "name", "role", "scope", "state", "progress", "ends", "every",
            ]);
            for r in &list {
                t.add_row(vec![
                    r.id.to_string(),
                    r.name.clone(),
                    r.role.clone(),
                    r.scope.clone(),
                    r.state.clone(),
                    format!("{}/{}", r.decided, r.total),
                    super::output::when(super::output::unix(&r.end), pim.now()),
                    r.every.clone().unwrap_or_default(),
                ]);
            }
            out(&t.to_string())?;
        }
        ReviewCommand::Show { id } => show(ctx, &pim.review_seen_by(&pim.viewer(&actor)?, id)?)?,
        ReviewCommand::Decide {
            id,
            user,
            decision,
            justification,
        } => {
            let justification = match justification.filter(|j| !j.trim().is_empty()) {
                Some(j) => j,
                None if ctx.interactive => {
                    // The item must exist for this reviewer before the reason is typed; a
                    // review they may not see is refused on record, as without a prompt.
                    if let Err(crate::Error::NotFound(_)) =
                        pim.review_seen_by(&pim.viewer(&actor)?, id)
                    {
                        let what = crate::ops::Unseen::Decide {
                            user: &user,
                            decision: &decision,
                        };
                        return Err(pim.refuse_unseen_review(&actor, id, what).into());
                    }
                    super::prompt::text(
                        &format!("Reason to {decision} {user}'s assignment"),
                        crate::limits::JUSTIFICATION,
                    )?
                }
                None => {
                    return Err(crate::Error::Usage(
                        "A review decision needs a reason. Pass -j/--justification.".to_string(),
                    )
                    .into())
                }
            };
            pim.decide_review(&actor, id, &user, &decision, &justification)?;
            // In a self-review, a user sees their own items only.
            show(ctx, &pim.review_seen_by(&pim.viewer(&actor)?, id)?)?;
        }
        ReviewCommand::Complete { id, yes } => {
            if ctx.interactive && !yes {
                let r = match pim.review_seen_by(&pim.viewer(&actor)?, id) {
                    Err(crate::Error::NotFound(_)) => {
                        let unseen = crate::ops::Unseen::Complete;
                        return Err(pim.refuse_unseen_review(&actor, id, unseen).into());
                    }
                    r => r?,
                };
                let removals: Vec<_> = r
                    .items
                    .iter()
                    .filter(|i| i.applied.is_none())
                    .filter(|i| {
                        match i.decision.as_deref() {
                            Some(d) => d,
                            None if r.default == "recommendation" => i.recommendation.as_str(),
                            None => r.default.as_str(),
                        }
                    } == "remove")
                    .collect();
                if removals.is_empty() {
                    ctx.note(&format!("Completing review {id} removes nothing."));
                } else {
                    let mut t = super::output::table_for_stderr(&[
                        "remove", "role", "scope", "type", "because",
                    ]);
                    for i in &removals {
                        t.add_row(vec![
                            i.user.clone(),
                            i.role.clone(),
                            i.scope.clone(),
                            i.kind.to_string(),
                            match &i.decision {
                                Some(_) => {
                                    format!("decided by {}", i.reviewer.clone().unwrap_or_default())
                                }
                                None => format!("undecided; default {}", r.default),
                            },
                        ]);
                    }
                    eprintln!("{t}");
                    if !super::prompt::confirm(&format!(
                        "Remove these {} assignment(s) and complete review {id}?",
                        removals.len()
                    ))? {
                        ctx.note("Nothing changed; the review stays open.");
                        return Ok(0);
                    }
                }
            }
            let r = pim.complete_review(&actor, id)?;
            show(ctx, &r)?;
        }
        ReviewCommand::Export { id, output } => {
            let r = pim.review_seen_by(&pim.viewer(&actor)?, id)?;
            // Exact bytes to a file or a pipe; escaped for a person reading a terminal.
            let terminal = output.is_none() && std::io::stdout().is_terminal();
            let sink: Box<dyn Write> = match &output {
                Some(path) => Box::new(
                    crate::privilege::create_output(path, &ctx.protected())
                        .map_err(|e| crate::Error::Environment(format!("Cannot write {e}.")))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut w = csv::Writer::from_writer(sink);
            w.write_record([
                "review",
                "user",
                "role",
                "scope",
                "type",
                "recommendation",
                "decision",
                "reviewer",
                "justification",
                "decided_at",
                "applied",
                "result",
            ])?;
            for i in &r.items {
                let cells = [
                    r.id.to_string(),
                    i.user.clone(),
                    i.role.clone(),
                    i.scope.clone(),
                    i.kind.to_string(),
                    i.recommendation.clone(),
                    i.decision.clone().unwrap_or_default(),
                    i.reviewer.clone().unwrap_or_default(),
                    i.justification.clone().unwrap_or_default(),
                    i.decided_at.clone().unwrap_or_default(),
                    i.applied.clone().unwrap_or_default(),
                    i.result.clone().unwrap_or_default(),
                ];
                w.write_record(cells.iter().map(|c| {
                    let cell = spreadsheet_safe(c);
                    if terminal {
                        super::output::safe(&cell).into_owned()
                    } else {
                        cell.into_owned()
                    }
                }))?;
            }
            w.flush()?;
        }
    }
    Ok(0)
}

pub fn run_alerts(ctx: &Ctx, fail_on: Option<String>) -> anyhow::Result<i32> {
    let (pim, actor) = ctx.open()?;
    let alerts = pim.alerts_seen_by(&pim.viewer(&actor)?)?;
    if ctx.json {
        json(&alerts)?;
    } else if alerts.is_empty() {
        out("No alerts.")?;
    } else {
        let mut t = table(&[
            "severity",
            "alert",
            "concerns",
            "what happened",
            "what to do",
        ]);
        // Long sentences wrap within a readable width.
        t.wrap(140);
        for a in &alerts {
            let concerns = a
                .roles
                .iter()
                .chain(a.users.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            t.add_row(vec![
                format!("{:?}", a.severity).to_lowercase(),
                a.id.clone(),
                concerns,
                a.message.clone(),
                a.remedy.clone(),
            ]);
        }
        out(&t.to_string())?;
    }
    let threshold = fail_on.as_deref().and_then(crate::ops::Severity::parse);
    Ok(match threshold {
        Some(level) if alerts.iter().any(|a| a.severity >= level) => 1,
        _ => 0,
    })
}
