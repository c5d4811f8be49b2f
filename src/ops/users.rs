//! Users, their authenticators, and `init`, which creates the break-glass administrator.

use super::Recorder;
use super::{
    actor_user, has_permission, permission_error, refuse, require, would_orphan_protected, Pim,
};
use crate::audit::Event;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::limits;
use crate::mfa;
use crate::policy::{sendable_email, valid_handle, Policy};
use crate::scope::Scope;
use crate::store::Db;
use crate::vault::Vault;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

pub use crate::store::User;

/// A new authenticator: show the URI (and its QR code) to the user once. It takes effect
/// only when a first code from it confirms it (`Pim::confirm_enrolment`).
#[derive(Debug, Clone, Serialize)]
pub struct Enrollment {
    pub user: String,
    pub otpauth_uri: String,
    /// Base32, as in the URI.
    pub secret: String,
    /// Waits for its first code (always, for a new enrolment).
    pub pending: bool,
    /// The first code must come before this instant (RFC 3339).
    pub confirm_by: String,
}

/// A one-time enrolment an administrator issued: the user may enrol a new authenticator
/// under their own account, without a code from the old one, until `until`.
#[derive(Debug, Clone, Serialize)]
pub struct EnrolmentGrant {
    pub user: String,
    pub until: String,
}

/// How long an enrolment waits for its first code.
pub const CONFIRM_WITHIN: i64 = 3600;

/// How long a one-time enrolment issued by an administrator stays open.
pub const GRANT_FOR: i64 = 86_400;

/// The refusal of a wrong first code that leaves the enrolment waiting (a terminal asks
/// again).
pub const NOT_THE_NEW_CODE: &str = "That is not the new authenticator's current code.";

/// Wrong first codes before a pending enrolment is dropped.
pub const CONFIRM_TRIES: i64 = 5;

pub(crate) fn find(conn: &Db, name: &str) -> Result<Option<User>> {
    conn.find_user(name)
}

pub(crate) fn get(conn: &Db, name: &str) -> Result<User> {
    find(conn, name)?.ok_or_else(|| {
        Error::NotFound(format!(
            "There is no user named '{name}'. See `pim user list`."
        ))
    })
}

fn check_new_user(name: &str, email: Option<&str>) -> Result<()> {
    limits::check("user name", name, limits::NAME)?;
    limits::check_opt("e-mail address", email, limits::EMAIL)?;
    if !valid_handle(name) {
        return Err(Error::Usage(format!(
            "'{name}' is not a valid user name: use letters, digits, '.', '_' and '-', starting with a letter or digit."
        )));
    }
    if let Some(e) = email {
        if !sendable_email(e) {
            return Err(Error::Usage(format!("'{e}' is not an e-mail address.")));
        }
    }
    Ok(())
}

fn insert_user(
    conn: &Db,
    now: DateTime<Utc>,
    name: &str,
    email: Option<&str>,
    display_name: Option<&str>,
) -> Result<i64> {
    conn.insert_user(name, email, display_name, now.timestamp())
}

/// A new secret for `user`, kept pending (sealed) until a first code from it confirms it.
fn enroll_in(conn: &Db, vault: &Vault, user: &str, now: i64) -> Result<Enrollment> {
    let secret = mfa::new_secret();
    let b32 = mfa::to_base32(&secret);
    let otpauth_uri = mfa::otpauth_uri(&secret, user)
        .ok_or_else(|| Error::Usage(format!("'{user}' cannot name an authenticator account.")))?;
    conn.set_pending_enrolment(user, &vault.seal(user, &secret)?, now, 0)?;
    Ok(Enrollment {
        user: user.to_string(),
        otpauth_uri,
        secret: b32,
        pending: true,
        confirm_by: crate::time::rfc3339(crate::time::from_unix(now + CONFIRM_WITHIN)),
    })
}

/// The checks of an authenticator that come before any code: it exists and is not
/// locked. A refusal is recorded with `context`. Gives the sealed secret.
pub(crate) fn mfa_ready(
    conn: &Recorder<'_>,
    now: DateTime<Utc>,
    user: &User,
    context: Event,
) -> Result<String> {
    let crate::store::TotpState {
        secret: stored,
        locked_until,
        blocked,
        ..
    } = conn.totp_state(user.id)?;
    let t = now.timestamp();
    if blocked {
        return refuse(
            conn,
            now,
            context,
            Error::Refused(format!(
                "{}'s authenticator is locked after {} consecutive wrong codes; an administrator must run `pim mfa reset {}`.",
                user.name, mfa::BLOCK_AFTER, user.name
            )),
        );
    }
    if let Some(until) = locked_until.filter(|&u| u > t) {
        let when = crate::time::relative(crate::time::from_unix(until), now);
        return refuse(
            conn,
            now,
            context,
            Error::Refused(format!(
                "{}'s authenticator is locked after repeated wrong codes; try again {when} (or an administrator's `pim mfa reset {}` drops it, and you enrol again).",
                user.name, user.name
            )),
        );
    }
    let Some(stored) = stored else {
        return refuse(
            conn,
            now,
            context,
            Error::Refused(format!(
                "{} has no authenticator. Run `pim mfa enroll` first (or ask an administrator to).",
                user.name
            )),
        );
    };
    Ok(stored)
}

/// Check a TOTP code for `user` at `now`: one step of skew, each step accepted at most once,
/// and escalating locks after repeated failures: every `MAX_FAILURES` consecutive wrong codes
/// lock the authenticator for twice as long as the lock before (15 minutes, then 30, ... at
/// most a day), and after `BLOCK_AFTER` it stays locked until `pim mfa reset`. A failure is
/// written to the audit log (with `context`'s role and scope) and returned as a recorded
/// refusal, so that the caller's transaction keeps it.
pub(crate) fn verify_code(
    conn: &Recorder<'_>,
    vault: &Vault,
    now: DateTime<Utc>,
    user: &User,
    code: Option<&str>,
    context: Event,
) -> Result<()> {
    let stored = mfa_ready(conn, now, user, context.clone())?;
    let crate::store::TotpState {
        last_step,
        failures,
        ..
    } = conn.totp_state(user.id)?;
    let t = now.timestamp();
    let secret = vault.open(&user.name, &stored)?;
    let Some(code) = code.filter(|c| !c.trim().is_empty()) else {
        return refuse(
            conn,
            now,
            context,
            Error::Refused(
                "A TOTP code is required. Pass --code, or run pim in a terminal to be asked."
                    .to_string(),
            ),
        );
    };
    let why = match mfa::matching_step(&secret, code, t) {
        Some(step) if last_step.is_none_or(|last| step > last) => {
            conn.totp_accepted(user.id, step)?;
            return Ok(());
        }
        Some(_) => "that code was already used; wait for the next one",
        None => "the code is wrong or out of date",
    };
    let failures = failures + 1;
    let block = failures >= mfa::BLOCK_AFTER;
    let lock = (!block && failures % mfa::MAX_FAILURES == 0)
        .then(|| t + mfa::lock_seconds(failures / mfa::MAX_FAILURES));
    conn.totp_failed(user.id, failures, lock, block)?;
    let mut fail = context.clone();
    fail.action = "mfa.fail".to_string();
    fail.principal = Some(user.name.clone());
    let fail = fail
        .detail("failures", failures)
        .detail("for", context.action.clone());
    let message = format!("{}{why}.", crate::error::WRONG_CODE);
    conn.record(fail.refused(&message))?;
    if block || lock.is_some() {
        conn.record(
            Event::new(&context.actor, "mfa.lock")
                .principal(&user.name)
                .expires(lock)
                .detail("failures", failures)
                .detail("until_reset", block),
        )?;
        let how_long = match lock {
            Some(until) => format!(
                "for {}",
                crate::time::format_duration(chrono::Duration::seconds(until - t))
            ),
            None => format!("until an administrator runs `pim mfa reset {}`", user.name),
        };
        return Err(Error::Refused(format!(
            "{message} That makes {failures} wrong codes in a row: the authenticator is now locked {how_long}."
        ))
        .recorded());
    }
    // Said before it happens: the last tries before a lock are counted down.
    let left = mfa::MAX_FAILURES - failures % mfa::MAX_FAILURES;
    if left <= 2 {
        let s = if left == 1 { "" } else { "s" };
        return Err(Error::Refused(format!(
            "{message} {left} more wrong code{s} in a row and the authenticator is locked."
        ))
        .recorded());
    }
    Err(Error::Refused(message).recorded())
}

/// A new service token: `pim_<name>_<40 hex>`; the name lets pim find the hash to compare.
fn new_token(name: &str) -> (String, String) {
    let secret = hex::encode(mfa::new_secret());
    let token = format!("pim_{name}_{secret}");
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    (token, hash)
}

/// Compare two equal-length strings without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A service principal and the token it was given (shown once).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceToken {
    pub user: String,
    pub token: String,
}

/// Cancel the activations that have not started yet whose quorum rested on an approval by
/// `approver`, disabled now: a waiting request is judged by approvals that stand, as a
/// policy change judges it (`policy_ops::approvals_under`). Started ones run on.
fn cancel_unapproved(
    tx: &Recorder<'_>,
    policy: &Policy,
    now: chrono::DateTime<chrono::Utc>,
    actor: &str,
    approver: &str,
) -> Result<()> {
    let t = now.timestamp();
    for id in tx.scheduled_approved_by(approver, t)? {
        let Some(r) = tx.request_by_id(id, t)? else {
            continue;
        };
        let Some(role) = policy.role(&r.role).filter(|r| r.settings.require_approval) else {
            continue;
        };
        if super::policy_ops::approvals_under(tx, role, id)?
            >= i64::from(role.settings.min_approvals)
        {
            continue;
        }
        let reason = format!("an approval it needed was {approver}'s, who is disabled now");
        tx.close_request(
            id,
            crate::model::Status::Canceled,
            t,
            actor,
            Some(&format!("canceled: {reason}")),
        )?;
        tx.record(
            super::approvals::event(actor, "activation.cancel", &r)
                .detail("reason", reason.as_str()),
        )?;
    }
    Ok(())
}

impl Pim {
    /// Authenticate a process by its service token; returns the service's name. A wrong,
    /// rotated or unknown token is refused and audited under `account`, the operating-system
    /// account that tried it (the name the token claims is kept in the details). An account
    /// with `MAX_FAILURES` failures within `FAILURE_WINDOW` is locked out of tokens for that
    /// window, refused without another event.
    pub fn authenticate_token(&mut self, token: &str, account: &str) -> Result<String> {
        self.write_system(|tx, now, _| {
            let t = now.timestamp();
            if let Some(until) = limited_until(tx, Limited::Account(account), t)? {
                return Err(Error::Refused(format!(
                    "Too many failed sign-ins from the account {account}; try again {}.",
                    crate::time::relative(crate::time::from_unix(until), now)
                )));
            }
            let claimed = token
                .strip_prefix("pim_")
                .and_then(|rest| rest.rsplit_once('_'))
                .map(|(name, _)| name.to_string())
                .unwrap_or_default();
            let stored = if token.len() > limits::TOKEN {
                None
            } else {
                tx.token_state(&claimed)?
            };
            let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
            let valid = matches!(&stored, Some(crate::store::TokenState { hash: Some(h), kind, .. }) if kind == "service" && constant_time_eq(h.as_bytes(), hash.as_bytes()));
            if !valid {
                let shown: String = claimed.chars().take(limits::NAME).collect();
                return refuse_limited(
                    tx,
                    now,
                    Limited::Account(account),
                    Event::new(account, "token.fail").detail("claimed", shown),
                    Error::Refused(
                        "PIM_TOKEN is not a valid service token (wrong, rotated or unknown). Ask an administrator for a new one (`pim user token NAME --rotate`)."
                            .to_string(),
                    ),
                );
            }
            if stored.is_some_and(|s| s.disabled) {
                return Err(Error::Refused(format!("The service '{claimed}' is disabled.")));
            }
            Ok(claimed)
        })
    }

    /// Add a service principal (permission `users`) and return its token, shown once.
    pub fn add_service(
        &mut self,
        actor: &str,
        name: &str,
        display_name: Option<&str>,
    ) -> Result<ServiceToken> {
        check_new_user(name, None)?;
        if name.contains('_') {
            return Err(Error::Usage(format!(
                "'{name}': service names use letters, digits, '.' and '-' (no '_')."
            )));
        }
        self.write(actor, |tx, now, policy| {
            let me = actor_user(tx, actor)?;
            require(tx, policy, &me, "users", &Scope::root(), now.timestamp())?;
            let id = insert_user(tx, now, name, None, display_name)?;
            let (token, hash) = new_token(name);
            tx.set_service_token(id, &hash)?;
            tx.record(
                Event::new(actor, "user.add")
                    .principal(name)
                    .detail("kind", "service")
                    // The token's SHA-256 (what is stored), so that `verify --state` can tell a
                    // token swapped behind the log; it reveals nothing of the token.
                    .detail("token_sha256", hash.clone()),
            )?;
            Ok(ServiceToken {
                user: name.to_string(),
                token,
            })
        })
    }

    /// Issue a new token for a service and void the old one (permission `users`).
    pub fn rotate_token(&mut self, actor: &str, name: &str) -> Result<ServiceToken> {
        self.write(actor, |tx, now, policy| {
            let me = actor_user(tx, actor)?;
            let user = get(tx, name)?;
            require(tx, policy, &me, "users", &Scope::root(), now.timestamp())?;
            if user.kind != "service" {
                return Err(Error::Usage(format!(
                    "'{name}' is a person, not a service; people use TOTP, not tokens."
                )));
            }
            let (token, hash) = new_token(name);
            tx.set_service_token(user.id, &hash)?;
            tx.record(
                Event::new(actor, "user.token.rotate")
                    .principal(name)
                    .detail("token_sha256", hash.clone()),
            )?;
            Ok(ServiceToken {
                user: name.to_string(),
                token,
            })
        })
    }

    /// Create the database's first state: the policy, the administrator with an
    /// authenticator, and a permanent active assignment of every protected role.
    pub fn init(
        conn: Db,
        clock: Arc<dyn Clock>,
        vault: Vault,
        os_actor: &str,
        admin: &str,
        email: Option<&str>,
        policy_source: &str,
    ) -> Result<(Pim, Enrollment)> {
        check_new_user(admin, email)?;
        let policy = Policy::parse(policy_source).map_err(|problems| {
            Error::Usage(format!(
                "The policy is invalid: {}",
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        let pim = Pim::new(conn, clock, vault);
        let tx = pim.conn.write()?;
        let now = pim.clock.now();
        let rec = Recorder::new(&tx, now, &policy);
        let existing: i64 = crate::audit::count(&tx)?;
        if existing > 0 {
            return Err(Error::Conflict(
                "This database is already initialised.".to_string(),
            ));
        }
        tx.set_policy_source(policy_source)?;
        rec.record_quietly(
            Event::new(os_actor, "init")
                .principal(admin)
                .detail("schema", crate::store::MIGRATIONS.len()),
        )?;
        rec.record_quietly(
            Event::new(os_actor, "policy.apply")
                .detail("roles", policy.roles.keys().cloned().collect::<Vec<_>>())
                .detail("sha256", policy_ops::source_hash(policy_source)),
        )?;
        let user_id = insert_user(&tx, now, admin, email, None)?;
        rec.record_quietly(Event::new(os_actor, "user.add").principal(admin))?;
        let enrollment = enroll_in(&tx, &pim.vault, admin, now.timestamp())?;
        rec.record_quietly(
            Event::new(os_actor, "mfa.enroll.start")
                .principal(admin)
                .expires(Some(now.timestamp() + CONFIRM_WITHIN)),
        )?;
        for role in policy.roles.values().filter(|r| r.protected) {
            let assignment = tx.insert_assignment(&crate::store::assignments::NewAssignment {
                user_id,
                role: &role.key,
                scope: "/",
                kind: crate::model::Kind::Active,
                start_at: now.timestamp(),
                end_at: None,
                justification: Some("break-glass administrator"),
                ticket: None,
                created_by: os_actor,
                created_at: now.timestamp(),
            })?;
            rec.record_quietly(
                Event::new(os_actor, "assignment.add")
                    .principal(admin)
                    .role(&role.key)
                    .scope("/")
                    .justification(Some("break-glass administrator"))
                    .detail("type", "active")
                    .detail("assignment", assignment),
            )?;
        }
        tx.commit()?;
        Ok((pim, enrollment))
    }

    /// Add a user (permission `users`).
    pub fn add_user(
        &mut self,
        actor: &str,
        name: &str,
        email: Option<&str>,
        display_name: Option<&str>,
    ) -> Result<User> {
        check_new_user(name, email)?;
        limits::check_opt("display name", display_name, limits::DISPLAY_NAME)?;
        if let Some(d) = display_name {
            limits::one_line("display name", d)?;
        }
        self.write(actor, |tx, now, policy| {
            let me = actor_user(tx, actor)?;
            require(tx, policy, &me, "users", &Scope::root(), now.timestamp())?;
            insert_user(tx, now, name, email, display_name)?;
            let mut event = Event::new(actor, "user.add").principal(name);
            if let Some(e) = email {
                event = event.detail("email", e);
            }
            tx.record(event)?;
            get(tx, name)
        })
    }

    pub fn users(&self) -> Result<Vec<User>> {
        self.conn.all_users()
    }

    pub fn user(&self, name: &str) -> Result<User> {
        get(&self.conn, name)
    }

    /// Disable or enable a user (permission `users`). A disabled user holds nothing: their
    /// activations end now. The last holder of a protected role cannot be disabled.
    pub fn set_disabled(&mut self, actor: &str, name: &str, disabled: bool) -> Result<User> {
        self.write(actor, |tx, now, policy| {
            let me = actor_user(tx, actor)?;
            let target = get(tx, name)?;
            let t = now.timestamp();
            require(tx, policy, &me, "users", &Scope::root(), t)?;
            if target.disabled == disabled {
                return Err(Error::Conflict(format!(
                    "'{name}' is already {}.",
                    if disabled { "disabled" } else { "enabled" }
                )));
            }
            let action = if disabled { "user.disable" } else { "user.enable" };
            if disabled {
                for role in policy.roles.values().filter(|r| r.protected) {
                    if would_orphan_protected(tx, &role.key, target.id, None, t)? {
                        return refuse(
                            tx,
                            now,
                            Event::new(actor, action).principal(name).role(&role.key),
                            Error::Refused(format!(
                                "'{name}' is the last holder of the protected role {}; make someone else a holder first.",
                                role.key
                            )),
                        );
                    }
                }
            }
            tx.set_disabled(target.id, disabled)?;
            tx.record(Event::new(actor, action).principal(name))?;
            if disabled {
                super::activation::end_activations(
                    tx,
                    policy,
                    now,
                    actor,
                    crate::store::requests::Of::User(target.id),
                    crate::model::Status::Revoked,
                    "activation.revoke",
                    "the user was disabled",
                )?;
                cancel_unapproved(tx, policy, now, actor, &target.name)?;
            }
            get(tx, name)
        })
    }

    /// Enrol an authenticator. For yourself: freely the first time, with a valid current
    /// code to replace one. For another user: permission `users`.
    /// Start enrolling your own authenticator: a new secret, pending until a first code from
    /// it confirms it (`confirm_enrolment`); your current one stays in force until then.
    /// Replacing one needs a current code, or a one-time enrolment an administrator issued.
    /// (`target` other than `actor`: see `grant_enrolment`; nobody sees another's secret.)
    pub fn enroll(
        &mut self,
        actor: &str,
        target: Option<&str>,
        code: Option<&str>,
    ) -> Result<Enrollment> {
        if target.is_some_and(|t| t != actor) {
            return Err(Error::Usage(
                "Nobody enrols another user's authenticator (they would see its secret). Issue a one-time enrolment with `pim mfa enroll NAME` and have them run `pim mfa enroll`.".to_string(),
            ));
        }
        let vault = self.vault.clone();
        self.write(actor, |tx, now, _policy| {
            let user = actor_user(tx, actor)?;
            let t = now.timestamp();
            let event = Event::new(actor, "mfa.enroll.start").principal(actor);
            if user.kind == "service" {
                return Err(Error::Refused(format!(
                    "'{actor}' is a service principal; services authenticate with a token, never TOTP."
                )));
            }
            let granted = tx.enrolment_grant(actor)?.is_some_and(|until| until > t);
            if user.mfa_enrolled && !granted {
                verify_code(tx, &vault, now, &user, code, event.clone())?;
            }
            let enrollment = enroll_in(tx, &vault, actor, t)?;
            tx.record(
                event
                    .expires(Some(t + CONFIRM_WITHIN))
                    .detail("replaces", user.mfa_enrolled)
                    .detail("one_time", granted),
            )?;
            Ok(enrollment)
        })
    }

    /// Confirm your pending enrolment with a first code from the new authenticator: only then
    /// does it replace the old one. Wrong codes count; after `CONFIRM_TRIES` the pending
    /// enrolment is dropped.
    /// `confirm_enrolment`'s refusal when nothing waits for a first code, said before a
    /// code is asked for.
    pub fn enrolment_waiting(&self, actor: &str) -> Result<()> {
        let t = self.now().timestamp();
        match self.conn.pending_enrolment(actor)? {
            Some((_, at, _)) if at + CONFIRM_WITHIN > t => Ok(()),
            _ => Err(no_enrolment_waiting()),
        }
    }

    pub fn confirm_enrolment(&mut self, actor: &str, code: &str) -> Result<()> {
        let vault = self.vault.clone();
        self.write(actor, |tx, now, _policy| {
            let user = actor_user(tx, actor)?;
            let t = now.timestamp();
            let event = Event::new(actor, "mfa.enroll").principal(actor);
            let Some((sealed, at, tries)) = tx
                .pending_enrolment(actor)?
                .filter(|(_, at, _)| at + CONFIRM_WITHIN > t)
            else {
                return Err(no_enrolment_waiting());
            };
            let secret = vault.open(actor, &sealed)?;
            let Some(step) = mfa::matching_step(&secret, code, t) else {
                let tries = tries + 1;
                let message = if tries >= CONFIRM_TRIES {
                    tx.clear_pending_enrolment(actor)?;
                    format!("That is not the new authenticator's code; after {tries} wrong codes the enrolment is dropped. Start again with `pim mfa enroll`.")
                } else {
                    tx.set_pending_enrolment(actor, &sealed, at, tries)?;
                    NOT_THE_NEW_CODE.to_string()
                };
                return refuse(tx, now, event.detail("tries", tries), Error::Refused(message));
            };
            let previous = tx.totp_state(user.id)?.last_step;
            tx.set_totp_secret(actor, &sealed)?;
            tx.totp_accepted(user.id, previous.map_or(step, |p| p.max(step)))?;
            tx.clear_pending_enrolment(actor)?;
            tx.clear_enrolment_grant(actor)?;
            tx.record(
                event
                    .detail("replaced", user.mfa_enrolled)
                    .detail("confirmed", true),
            )?;
            Ok(())
        })
    }

    /// Issue a one-time enrolment (permission `users`): `name` may enrol a new authenticator
    /// under their own account, without a code from the old one, for a day. The
    /// administrator never sees the secret.
    pub fn grant_enrolment(&mut self, actor: &str, name: &str) -> Result<EnrolmentGrant> {
        self.write(actor, |tx, now, policy| {
            let me = actor_user(tx, actor)?;
            let user = get(tx, name)?;
            let t = now.timestamp();
            let event = Event::new(actor, "mfa.enroll.grant").principal(name);
            if !has_permission(tx, policy, &me, "users", &Scope::root(), t)? {
                return refuse(tx, now, event, permission_error("users", &Scope::root()));
            }
            if user.kind == "service" {
                return Err(Error::Refused(format!(
                    "'{name}' is a service principal; services authenticate with a token, never TOTP."
                )));
            }
            if name == actor {
                return Err(Error::Usage(
                    "Run `pim mfa enroll` to enrol your own authenticator.".to_string(),
                ));
            }
            tx.set_enrolment_grant(name, t + GRANT_FOR)?;
            tx.record(event.expires(Some(t + GRANT_FOR)))?;
            Ok(EnrolmentGrant {
                user: name.to_string(),
                until: crate::time::rfc3339(crate::time::from_unix(t + GRANT_FOR)),
            })
        })
    }

    /// Drop a user's authenticator and lockout (permission `users`).
    pub fn reset_mfa(&mut self, actor: &str, name: &str) -> Result<()> {
        self.write(actor, |tx, now, policy| {
            let me = actor_user(tx, actor)?;
            let user = get(tx, name)?;
            if !has_permission(tx, policy, &me, "users", &Scope::root(), now.timestamp())? {
                return refuse(
                    tx,
                    now,
                    Event::new(actor, "mfa.reset").principal(name),
                    permission_error("users", &Scope::root()),
                );
            }
            tx.clear_totp(user.id)?;
            tx.clear_pending_enrolment(name)?;
            tx.record(Event::new(actor, "mfa.reset").principal(name))?;
            Ok(())
        })
    }
}

/// Who a rate limit counts: an operating-system account signing in without being a pim user
/// (failed tokens, strangers), or a pim user whose attempts are refused.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limited<'a> {
    Account(&'a str),
    User(&'a str),
    /// A pim user's changes (successful writes).
    Changes(&'a str),
}

impl Limited<'_> {
    fn key(&self) -> String {
        match self {
            Limited::Account(a) => format!("os:{a}"),
            Limited::User(u) => format!("user:{u}"),
            Limited::Changes(u) => format!("changes:{u}"),
        }
    }

    /// Attempts within `mfa::LOCK_SECONDS` before the limit: a stranger gets few; a user's
    /// refusals are throttled only when they flood the log.
    fn allowance(&self) -> i64 {
        match self {
            Limited::Account(_) => mfa::MAX_FAILURES,
            Limited::User(_) => REFUSALS_PER_WINDOW,
            Limited::Changes(_) => CHANGES_PER_WINDOW,
        }
    }
}

/// Refused attempts a pim user may leave on record within 15 minutes; beyond that they are
/// still refused, but not recorded again until the window has passed (`refusal.throttle`).
pub const REFUSALS_PER_WINDOW: i64 = 30;

/// Changes (write commands) a pim user may make within 15 minutes. A bulk change (import,
/// apply, a review's creation) counts one more for every 1,000 rows it goes through, dry
/// runs included: its cost on the database, not its count of commands.
pub const CHANGES_PER_WINDOW: i64 = 600;

/// The budget units of a bulk change of `rows` rows.
pub fn bulk_units(rows: usize) -> i64 {
    1 + rows as i64 / 1000
}

/// How much of `actor`'s change budget the current window has used.
pub(crate) fn changes_used(conn: &Db, now: DateTime<Utc>, actor: &str) -> Result<i64> {
    Ok(window(conn, Limited::Changes(actor), now.timestamp())?.0)
}

/// `who`'s count in the current window (of `mfa::LOCK_SECONDS`) and when it began.
fn window(conn: &Db, who: Limited<'_>, t: i64) -> Result<(i64, i64)> {
    Ok(conn
        .limit_window(&who.key())?
        .map(|(count, first, _)| (count, first))
        .filter(|&(_, first)| first > t - mfa::LOCK_SECONDS)
        .unwrap_or((0, t)))
}

/// Add `units` to `who`'s window; returns the new count and, when it reaches the allowance,
/// until when `who` is limited (the end of the window).
fn bump(conn: &Db, who: Limited<'_>, t: i64, units: i64) -> Result<(i64, Option<i64>)> {
    let (count, first) = window(conn, who, t)?;
    let count = count + units.max(1);
    let until = (count >= who.allowance()).then_some(first + mfa::LOCK_SECONDS);
    conn.set_limit_window(&who.key(), count, first, until)?;
    Ok((count, until))
}

/// Count one change by `actor`; the one that spends the budget starts a pause until the end
/// of the window (`change.throttle`).
pub(crate) fn count_change(
    conn: &Recorder<'_>,
    now: DateTime<Utc>,
    actor: &str,
    units: i64,
) -> Result<()> {
    let (count, until) = bump(conn, Limited::Changes(actor), now.timestamp(), units)?;
    if let Some(until) = until {
        conn.record(
            Event::new(actor, "change.throttle")
                .expires(Some(until))
                .detail("changes", count),
        )?;
    }
    Ok(())
}

/// Until when `who` is over its limit, if it is.
pub(crate) fn limited_until(conn: &Db, who: Limited<'_>, now: i64) -> Result<Option<i64>> {
    Ok(conn
        .limit_window(&who.key())?
        .and_then(|(_, _, until)| until)
        .filter(|&u| u > now))
}

/// Record a refused attempt by `who` (its event, and one more in its window) and return the
/// refusal. The attempt that reaches the allowance within the window starts the limit for
/// the rest of it (`account.lock` for an account, `refusal.throttle` for a user). Over the
/// limit, the refusal is returned without another event.
pub(crate) fn refuse_limited<T>(
    conn: &Recorder<'_>,
    now: DateTime<Utc>,
    who: Limited<'_>,
    event: Event,
    err: Error,
) -> Result<T> {
    let t = now.timestamp();
    if limited_until(conn, who, t)?.is_some() {
        return Err(err);
    }
    let (failures, locked) = bump(conn, who, t, 1)?;
    let actor = event.actor.clone();
    conn.record(event.refused(&err.to_string()).detail("failures", failures))?;
    if let Some(until) = locked {
        let action = match who {
            Limited::Account(_) => "account.lock",
            _ => "refusal.throttle",
        };
        conn.record(
            Event::new(&actor, action)
                .expires(Some(until))
                .detail("failures", failures),
        )?;
    }
    Err(err.recorded())
}

impl Pim {
    /// Seal the TOTP secrets of a database from before sealing (once, audited as
    /// `mfa.seal`). Returns how many were sealed.
    pub fn seal_plain_secrets(&mut self, actor: &str) -> Result<usize> {
        let vault = self.vault.clone();
        if !vault.usable() {
            return Ok(0);
        }
        if !self.conn.secrets_plain()? {
            return Ok(0);
        }
        self.write_system(|tx, _now, _| {
            let rows = tx.totp_secrets()?;
            let mut sealed = 0;
            for (id, name, stored) in rows {
                if Vault::is_sealed(&stored) {
                    continue;
                }
                let secret = vault.open(&name, &stored)?;
                tx.reseal_totp_secret(id, &vault.seal(&name, &secret)?)?;
                sealed += 1;
            }
            tx.set_secrets_sealed()?;
            tx.record(Event::new(actor, "mfa.seal").detail("secrets", sealed))?;
            Ok(sealed)
        })
    }
}

use super::policy_ops;

fn no_enrolment_waiting() -> Error {
    Error::NotFound(
        "You have no enrolment waiting for its first code (they wait an hour). Start one with `pim mfa enroll`.".to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::audit;

    #[test]
    fn init_makes_a_break_glass_administrator() {
        let (pim, _, secret) = pim();
        assert_eq!(secret.len(), 20);
        let admin = pim.user("admin").unwrap();
        assert!(admin.mfa_enrolled);
        let held = super::super::holdings(pim.conn(), admin.id, pim.now().timestamp()).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].role, "global-admin");
        assert_eq!(held[0].until, None);
        assert!(audit::verify(pim.conn()).unwrap().ok);
        assert_eq!(count_events(&pim, "init"), 1);
    }

    #[test]
    fn adding_users_needs_the_users_permission() {
        let (mut pim, _, _) = pim();
        pim.add_user("admin", "bob", Some("bob@example.com"), Some("Bob"))
            .unwrap();
        assert_eq!(
            pim.add_user("admin", "bob", None, None)
                .unwrap_err()
                .exit_code(),
            5
        );
        assert_eq!(
            pim.add_user("bob", "eve", None, None)
                .unwrap_err()
                .exit_code(),
            3
        );
        assert_eq!(
            pim.add_user("nobody", "eve", None, None)
                .unwrap_err()
                .exit_code(),
            3
        );
        assert_eq!(
            pim.add_user("admin", "bad name", None, None)
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(
            pim.add_user("admin", "x", Some("nope"), None)
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(count_events(&pim, "user.add"), 2);
    }

    #[test]
    fn codes_are_accepted_once_and_wrong_ones_lock() {
        let (mut pim, clock, secret) = pim();
        // Re-enrolling yourself needs a current code, and a code works once.
        let c = code(&clock, &secret);
        let new = pim.enroll("admin", None, Some(&c)).unwrap();
        assert_ne!(crate::mfa::from_base32(&new.secret).unwrap(), secret);
        assert_eq!(
            pim.enroll("admin", None, Some(&c)).unwrap_err().exit_code(),
            3
        );
        // Five wrong codes lock the authenticator, audited.
        let before = count_events(&pim, "mfa.fail");
        let wrong = wrong_code(&clock, &secret);
        for _ in 0..4 {
            assert_eq!(
                pim.enroll("admin", None, Some(&wrong))
                    .unwrap_err()
                    .exit_code(),
                3
            );
        }
        assert_eq!(count_events(&pim, "mfa.fail"), before + 4);
        assert_eq!(count_events(&pim, "mfa.lock"), 1);
        let err = pim.enroll("admin", None, Some(&wrong)).unwrap_err();
        assert!(err.to_string().contains("locked"), "{err}");
        // The lock passes with time.
        clock.advance(chrono::Duration::minutes(16));
        let latest = pim.user("admin").unwrap();
        assert!(latest.mfa_locked_until.is_some());
    }

    #[test]
    fn an_enrolment_takes_effect_with_its_first_code_and_nobody_sees_anothers_secret() {
        let (mut pim, clock, admin) = pim();
        pim.add_user("admin", "bob", None, None).unwrap();
        // Started, not in force: bob has no authenticator until the first code.
        let e = pim.enroll("bob", None, None).unwrap();
        assert!(e.pending);
        assert!(!pim.user("bob").unwrap().mfa_enrolled);
        let secret = crate::mfa::from_base32(&e.secret).unwrap();
        // Wrong first codes count; the fifth drops the pending enrolment.
        let wrong = wrong_code(&clock, &secret);
        for _ in 0..4 {
            assert_eq!(
                pim.confirm_enrolment("bob", &wrong)
                    .unwrap_err()
                    .exit_code(),
                3
            );
        }
        assert_eq!(
            pim.confirm_enrolment("bob", &wrong)
                .unwrap_err()
                .exit_code(),
            3
        );
        let gone = pim
            .confirm_enrolment("bob", &code(&clock, &secret))
            .unwrap_err();
        assert_eq!(gone.exit_code(), 4, "{gone}");
        // Started again and confirmed: in force.
        let e = pim.enroll("bob", None, None).unwrap();
        let secret = crate::mfa::from_base32(&e.secret).unwrap();
        pim.confirm_enrolment("bob", &code(&clock, &secret))
            .unwrap();
        assert!(pim.user("bob").unwrap().mfa_enrolled);
        // An hour later an unconfirmed enrolment is no more.
        clock.advance(chrono::Duration::minutes(1));
        let c = code(&clock, &secret);
        let e = pim.enroll("bob", None, Some(&c)).unwrap();
        clock.advance(chrono::Duration::minutes(61));
        let late = crate::mfa::from_base32(&e.secret).unwrap();
        assert_eq!(
            pim.confirm_enrolment("bob", &code(&clock, &late))
                .unwrap_err()
                .exit_code(),
            4
        );
        // An administrator never gets bob's secret: only a one-time enrolment, which lets
        // bob replace his authenticator without the old one (once, for a day).
        assert_eq!(
            pim.enroll("admin", Some("bob"), None)
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(
            pim.grant_enrolment("bob", "admin").unwrap_err().exit_code(),
            3
        );
        let g = pim.grant_enrolment("admin", "bob").unwrap();
        assert_eq!(g.user, "bob");
        let e = pim.enroll("bob", None, None).unwrap();
        let newer = crate::mfa::from_base32(&e.secret).unwrap();
        pim.confirm_enrolment("bob", &code(&clock, &newer)).unwrap();
        // Used up: replacing it again needs a code.
        assert_eq!(pim.enroll("bob", None, None).unwrap_err().exit_code(), 3);
        // bob's refused try and the administrator's grant.
        assert_eq!(count_events(&pim, "mfa.enroll.grant"), 2);
        assert!(count_events(&pim, "mfa.enroll") >= 2);
        let _ = admin;
        assert!(audit::verify(pim.conn()).unwrap().ok);
    }

    #[test]
    fn changes_have_a_budget_per_window() {
        let (mut pim, clock, _) = pim();
        // The administrator's confirmation of their authenticator was one change.
        for n in 0..super::CHANGES_PER_WINDOW - 1 {
            pim.add_user("admin", &format!("u{n}"), None, None).unwrap();
        }
        let e = pim.add_user("admin", "one-more", None, None).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("changes within 15 minutes"), "{e}");
        assert_eq!(count_events(&pim, "change.throttle"), 1);
        // Refused without more events, and again possible after the window.
        pim.add_user("admin", "still-not", None, None).unwrap_err();
        assert_eq!(count_events(&pim, "change.throttle"), 1);
        clock.advance(chrono::Duration::minutes(16));
        pim.add_user("admin", "later", None, None).unwrap();
        assert!(audit::verify(pim.conn()).unwrap().ok);
    }

    #[test]
    fn disabling_the_last_protected_holder_is_refused() {
        let (mut pim, _, _) = pim();
        pim.add_user("admin", "bob", None, None).unwrap();
        assert_eq!(
            pim.set_disabled("admin", "admin", true)
                .unwrap_err()
                .exit_code(),
            3
        );
        pim.set_disabled("admin", "bob", true).unwrap();
        assert_eq!(
            pim.set_disabled("admin", "bob", true)
                .unwrap_err()
                .exit_code(),
            5
        );
        pim.set_disabled("admin", "bob", false).unwrap();
        assert_eq!(count_events(&pim, "user.disable"), 2);
    }

    #[test]
    fn mfa_reset_drops_the_authenticator() {
        let (mut pim, _, _) = pim();
        pim.add_user("admin", "bob", None, None).unwrap();
        enrol(&mut pim, "bob");
        assert!(pim.user("bob").unwrap().mfa_enrolled);
        assert_eq!(pim.reset_mfa("bob", "bob").unwrap_err().exit_code(), 3);
        pim.reset_mfa("admin", "bob").unwrap();
        assert!(!pim.user("bob").unwrap().mfa_enrolled);
        // Bob may enrol himself again without a code.
        pim.enroll("bob", None, None).unwrap();
    }
}
