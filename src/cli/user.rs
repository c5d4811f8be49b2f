//! `pim user ...` and `pim mfa ...`.

use super::context::Ctx;
use super::init::show_enrollment;
use super::output::{json, out, say, table, when};
use super::prompt;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (permission `users`)
    Add {
        /// The user's name (their operating-system account name, to act without --as)
        name: String,
        /// Where notifications to them go
        #[arg(long, value_name = "E", conflicts_with = "service")]
        email: Option<String>,
        /// A name for people ("Alice Martin")
        #[arg(long, value_name = "D")]
        display_name: Option<String>,
        /// A service principal for CI: prints its token once
        #[arg(long)]
        service: bool,
    },
    /// Issue a new token for a service and void the old one (permission `users`)
    Token {
        /// The service
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
        name: String,
        /// Required: says that the old token stops working
        #[arg(long, required = true)]
        rotate: bool,
    },
    /// List users
    List,
    /// Show one user
    Show {
        /// The user
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
        name: String,
    },
    /// Disable a user: they can do nothing and hold nothing (permission `users`)
    Disable {
        /// The user
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
        name: String,
    },
    /// Enable a disabled user (permission `users`)
    Enable {
        /// The user
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Enrol your TOTP authenticator: it takes effect once a first code from it confirms it
    /// (asked for at once on a terminal, else `pim mfa confirm`); replacing one needs a
    /// current code. With NAME (permission `users`): a one-time enrolment NAME completes
    /// under their own account within a day, without their old authenticator; you never
    /// see their secret
    Enroll {
        /// Issue a one-time enrolment for this user (default: enrol yourself)
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
        name: Option<String>,
        /// Your current code, to replace your authenticator
        #[arg(long, value_name = "C")]
        code: Option<String>,
    },
    /// Confirm your new authenticator with its first code (within an hour of `mfa enroll`)
    Confirm {
        /// A code from the new authenticator (asked for on a terminal)
        #[arg(long, value_name = "C")]
        code: Option<String>,
    },
    /// Drop a user's authenticator and lockout (permission `users`)
    Reset {
        /// The user
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
        name: String,
    },
}

fn show_users(
    ctx: &Ctx,
    users: &[crate::ops::User],
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    if ctx.json {
        return json(users);
    }
    let mut t = table(&["user", "display name", "e-mail", "kind", "state", "mfa"]);
    for u in users {
        let mfa = match (u.mfa_enrolled, u.mfa_locked_until) {
            (_, Some(l)) if l > now.timestamp() => format!("locked until {}", when(Some(l), now)),
            (true, _) => "enrolled".to_string(),
            (false, _) => "none".to_string(),
        };
        t.add_row(vec![
            u.name.clone(),
            u.display_name.clone().unwrap_or_default(),
            u.email.clone().unwrap_or_default(),
            u.kind.clone(),
            if u.disabled { "disabled" } else { "enabled" }.to_string(),
            mfa,
        ]);
    }
    out(&t.to_string())
}

fn show_token(ctx: &Ctx, t: &crate::ops::ServiceToken) -> anyhow::Result<()> {
    if ctx.json {
        return json(t);
    }
    out(&t.token)?;
    ctx.note(&format!(
        "This is {}'s token; it is shown once and pim keeps only its hash. Give it to the pipeline as PIM_TOKEN.",
        t.user
    ));
    Ok(())
}

pub fn run_user(ctx: &Ctx, cmd: UserCommand) -> anyhow::Result<i32> {
    let (mut pim, actor) = ctx.open()?;
    let now = pim.now();
    match cmd {
        UserCommand::Add {
            name,
            display_name,
            service: true,
            ..
        } => {
            let t = pim.add_service(&actor, &name, display_name.as_deref())?;
            show_token(ctx, &t)?;
            if crate::privilege::account_exists(&name) {
                ctx.note(&format!(
                    "Note: this machine has an account named {name}; it is not the service, which signs in with its token only."
                ));
            }
        }
        UserCommand::Token { name, rotate: _ } => {
            let t = pim.rotate_token(&actor, &name)?;
            show_token(ctx, &t)?;
        }
        UserCommand::Add {
            name,
            email,
            display_name,
            service: false,
        } => {
            let u = pim.add_user(&actor, &name, email.as_deref(), display_name.as_deref())?;
            if ctx.json {
                json(&u)?;
            } else {
                say(&format!(
                    "Added user {}. Next: {} runs `pim mfa enroll` under their own account, and `pim assign {} ROLE`.",
                    u.name, u.name, u.name
                ))?;
            }
        }
        UserCommand::List => {
            let viewer = pim.viewer(&actor)?;
            show_users(ctx, &pim.users_seen_by(&viewer)?, now)?
        }
        UserCommand::Show { name } => {
            let viewer = pim.viewer(&actor)?;
            let u = pim.user_seen_by(&viewer, &name)?;
            if ctx.json {
                json(&u)?;
            } else {
                show_users(ctx, std::slice::from_ref(&u), now)?;
            }
        }
        UserCommand::Disable { name } => {
            let u = pim.set_disabled(&actor, &name, true)?;
            if ctx.json {
                json(&u)?;
            } else {
                say(&format!("Disabled {name}; their activations have ended."))?;
            }
        }
        UserCommand::Enable { name } => {
            let u = pim.set_disabled(&actor, &name, false)?;
            if ctx.json {
                json(&u)?;
            } else {
                say(&format!("Enabled {name}."))?;
            }
        }
    }
    Ok(0)
}

/// Ask for the first code of a new authenticator until it confirms it (a wrong one is asked
/// again, up to the tries an enrolment allows).
pub fn confirm_first_code(ctx: &Ctx, pim: &mut crate::Pim, actor: &str) -> anyhow::Result<()> {
    loop {
        let code = prompt::hidden("First code from the new authenticator")?;
        match pim.confirm_enrolment(actor, &code) {
            Ok(()) => {
                ctx.note("Confirmed: the new authenticator is in force.");
                return Ok(());
            }
            Err(e) if e.to_string() == crate::ops::NOT_THE_NEW_CODE => {
                ctx.note(&format!("{e} Try again."));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub fn run_mfa(ctx: &Ctx, cmd: MfaCommand) -> anyhow::Result<i32> {
    let (mut pim, actor) = ctx.open()?;
    match cmd {
        MfaCommand::Enroll {
            name: Some(name), ..
        } if name != actor => {
            let g = pim.grant_enrolment(&actor, &name)?;
            if ctx.json {
                json(&g)?;
            } else {
                say(&format!(
                    "{name} may now enrol a new authenticator under their own account until {}: `pim mfa enroll`, then its first code. Their current one (if any) stays until they confirm; you never see the secret.",
                    when(super::output::unix(&g.until), pim.now())
                ))?;
            }
        }
        MfaCommand::Enroll { code, .. } => {
            let mut code = code;
            if code.is_none() && ctx.interactive && pim.user(&actor).is_ok_and(|u| u.mfa_enrolled) {
                ctx.note("Replacing your authenticator: first a code from the current one (or an administrator's one-time enrolment: `pim mfa enroll YOU`).");
                code = Some(prompt::code(&actor)?);
            }
            let e = pim.enroll(&actor, None, code.as_deref())?;
            if ctx.json {
                json(&e)?;
            } else {
                show_enrollment(&e)?;
            }
            if ctx.interactive && !ctx.json {
                confirm_first_code(ctx, &mut pim, &actor)?;
            } else {
                ctx.note(&format!(
                    "It takes effect once confirmed: `pim mfa confirm --code CODE` with a code from it, before {}.",
                    when(super::output::unix(&e.confirm_by), pim.now())
                ));
            }
        }
        MfaCommand::Confirm { code } => {
            let asked = code.is_none() && ctx.interactive;
            match code {
                Some(c) => pim.confirm_enrolment(&actor, &c)?,
                None if ctx.interactive => {
                    // Nothing waiting is said before a code is asked for.
                    pim.enrolment_waiting(&actor)?;
                    confirm_first_code(ctx, &mut pim, &actor)?
                }
                None => {
                    return Err(crate::Error::Usage(
                        "Pass --code with a code from the new authenticator.".to_string(),
                    )
                    .into())
                }
            }
            if ctx.json {
                json(&serde_json::json!({"user": actor, "mfa_enrolled": true}))?;
            } else if !asked {
                // (confirm_first_code has said it on the terminal.)
                say(&format!(
                    "{actor}'s new authenticator is confirmed and in force."
                ))?;
            }
        }
        MfaCommand::Reset { name } => {
            pim.reset_mfa(&actor, &name)?;
            if ctx.json {
                json(&serde_json::json!({"user": name, "mfa_enrolled": false}))?;
            } else {
                say(&format!("Dropped {name}'s authenticator and lockout. They can enrol again with `pim mfa enroll`."))?;
            }
        }
    }
    Ok(0)
}
