//! `pim user ...` and `pim mfa ...`.

use super::context::Ctx;
use super::init::show_enrollment;
use super::output::{json, out, table, when};
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
    /// Enrol your TOTP authenticator (re-enrolling needs a current code); with NAME, enrol
    /// another user's (permission `users`)
    Enroll {
        /// Another user to enrol (default: yourself)
        #[arg(add = clap_complete::ArgValueCandidates::new(super::complete::users))]
        name: Option<String>,
        /// Your current code, to replace your authenticator
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
                out(&format!(
                    "Added user {}. Next: `pim mfa enroll {}` and `pim assign {} ROLE`.",
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
                out(&format!("Disabled {name}; their activations have ended."))?;
            }
        }
        UserCommand::Enable { name } => {
            let u = pim.set_disabled(&actor, &name, false)?;
            if ctx.json {
                json(&u)?;
            } else {
                out(&format!("Enabled {name}."))?;
            }
        }
    }
    Ok(0)
}

pub fn run_mfa(ctx: &Ctx, cmd: MfaCommand) -> anyhow::Result<i32> {
    let (mut pim, actor) = ctx.open()?;
    match cmd {
        MfaCommand::Enroll { name, code } => {
            let own = name.as_deref().is_none_or(|n| n == actor);
            let mut code = code;
            if own
                && code.is_none()
                && pim.user(&actor).is_ok_and(|u| u.mfa_enrolled)
                && ctx.interactive
            {
                code = Some(prompt::code(&actor)?);
            }
            let e = pim.enroll(&actor, name.as_deref(), code.as_deref())?;
            if ctx.json {
                json(
                    &serde_json::json!({"user": e.user, "otpauth_uri": e.otpauth_uri, "secret": e.secret}),
                )?;
            } else {
                show_enrollment(&e)?;
            }
        }
        MfaCommand::Reset { name } => {
            pim.reset_mfa(&actor, &name)?;
            if ctx.json {
                json(&serde_json::json!({"user": name, "mfa_enrolled": false}))?;
            } else {
                out(&format!("Dropped {name}'s authenticator and lockout. They can enrol again with `pim mfa enroll`."))?;
            }
        }
    }
    Ok(0)
}
