//! `pim init`: create the database, load the policy, make the break-glass administrator.

use super::context::{real_user, Ctx};
use super::output::{json, out, say};
use super::policy::read_policy;
use crate::clock::SystemClock;
use crate::ops::Enrollment;
use crate::vault::Vault;
use crate::{mfa, policy, privilege, store, Pim};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The break-glass administrator to create
    #[arg(long, value_name = "NAME")]
    admin: String,
    /// The administrator's e-mail address
    #[arg(long, value_name = "E")]
    email: Option<String>,
    /// The policy to load (default: the built-in example policy)
    #[arg(long, value_name = "FILE")]
    policies: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, args: InitArgs) -> anyhow::Result<i32> {
    let os_actor = real_user()?;
    // Through the installed (set-group-id) pim only root creates a database: it becomes the
    // installed one, owned by root and the pim group.
    let shared = privilege::installed_group();
    if shared.is_some() && privilege::real_uid() != 0 {
        return Err(crate::Error::Refused(
            "`pim init` through the installed (set-group-id) pim is for root. Run it as root, or use a pim binary of your own for a database of your own."
                .to_string(),
        )
        .into());
    }
    let source = match &args.policies {
        Some(path) => read_policy(path)?.source,
        None => policy::EXAMPLE.to_string(),
    };
    let db = match &ctx.server {
        Some((url, installed)) => store::pg::create(url, *installed)?,
        None => store::create(&ctx.db, shared)?,
    };
    let file = db.file.clone();
    let instance = db.conn.instance()?;
    // A key made for a server the caller named is bound to it (see `Vault::load`).
    let server = match &ctx.server {
        Some((url, false)) => Some(store::pg::identity(url)?),
        _ => None,
    };
    let created = (|| -> crate::Result<(Pim, Enrollment)> {
        let vault = Vault::create(&instance, shared, server.as_deref())?;
        Pim::init(
            db.conn,
            Arc::new(SystemClock),
            vault,
            &os_actor,
            &args.admin,
            args.email.as_deref(),
            &source,
        )
    })();
    let (pim, enrollment) = match created {
        Ok(done) => done,
        Err(e) => {
            // Leave no half-made database (or key) behind.
            if ctx.server.is_none() {
                store::discard(&file.path);
            }
            crate::vault::discard(&instance, shared.is_some());
            return Err(e.into());
        }
    };
    let policy = pim.policy()?;
    let protected: Vec<String> = policy
        .roles
        .values()
        .filter(|r| r.protected)
        .map(|r| r.key.clone())
        .collect();
    if ctx.json {
        json(&serde_json::json!({
            "db": ctx.db.display().to_string(),
            "admin": args.admin,
            "otpauth_uri": enrollment.otpauth_uri,
            "secret": enrollment.secret,
            "pending": enrollment.pending,
            "confirm_by": enrollment.confirm_by,
            "protected_roles": protected,
        }))?;
    } else {
        say(&format!(
            "Created {} with {} as break-glass administrator (permanently active: {}).",
            ctx.db.display(),
            args.admin,
            if protected.is_empty() {
                "no protected roles".to_string()
            } else {
                protected.join(", ")
            }
        ))?;
        show_enrollment(&enrollment)?;
    }
    // The authenticator takes effect with its first code: asked for at once on a terminal.
    let mut pim = pim;
    if ctx.interactive && !ctx.json {
        super::user::confirm_first_code(ctx, &mut pim, &args.admin)?;
    } else {
        ctx.note(&format!(
            "{}'s authenticator takes effect once confirmed: `pim mfa confirm --code CODE` (as {}) with a code from it, within an hour.",
            args.admin, args.admin
        ));
    }
    if !pim.policy_warnings(&policy)?.is_empty() {
        ctx.note(
            "Note: the policy names approvers who are not users yet; add them with `pim user add`.",
        );
    }
    Ok(0)
}

/// Print an authenticator's URI and QR code for a person to scan.
pub fn show_enrollment(e: &Enrollment) -> anyhow::Result<()> {
    // The secret last: on a terminal of 24 rows the QR code pushes what comes before it off
    // the screen.
    out(&format!(
        "\nScan this into an authenticator app for {}:\n\n{}\n{}\n(or enter the secret {} by hand)",
        e.user,
        mfa::qr_text(&e.otpauth_uri),
        e.otpauth_uri,
        e.secret,
    ))
}
