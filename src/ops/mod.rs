//! The operations of pim over one database: each change of state is one `IMMEDIATE`
//! transaction that also appends its audit event. The core takes plain values (the actor's
//! name, a code the CLI read, the clock) and returns typed results or errors.

mod activation;
mod alerts;
mod approvals;
mod assignments;
mod bulk;
mod health;
#[cfg(test)]
mod invariants;
mod notices;
mod policy_ops;
mod record;
mod reviews;
mod sweep;
mod users;
mod views;

pub use activation::{ActivationInput, ActivationPlan, ActiveRole, Request, Status};
pub use alerts::{Alert, Severity};
pub use approvals::{Decision, ExtendInput};
pub use assignments::{AssignInput, Assignment, AssignmentFilter, End};
pub use bulk::{parse_desired, Desired, ImportRow, ImportSummary, Plan, PlanItem};
pub use health::{Health, Recount};
pub use policy_ops::{change_json as policy_change_json, Canceled, PolicyApplied, RoleSummary};
pub use reviews::{Review, ReviewInput, ReviewItem, Unseen};
pub use sweep::SweepReport;
pub use users::{Enrollment, EnrolmentGrant, ServiceToken, User, NOT_THE_NEW_CODE};
pub use views::Viewer;

use crate::audit::Event;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::params;
use crate::policy::Policy;
use crate::scope::Scope;
use crate::store::Db;
use crate::vault::Vault;
use chrono::{DateTime, Utc};
pub(crate) use record::Recorder;
use std::sync::Arc;

/// pim over one open database.
pub struct Pim {
    conn: Db,
    clock: Arc<dyn Clock>,
    /// The key of the TOTP secrets.
    vault: Arc<Vault>,
    /// Notification commands are root's to configure (the installed database, whose
    /// commands run in root's sweep, opened by someone else).
    commands_for_root: bool,
    /// The outbox rows this process queued (ranges: start exclusive, end inclusive).
    queued: Vec<(i64, i64)>,
    /// Whether changes count against their actor's budget (not for root).
    pub(crate) budget: bool,
}

/// A role held right now, directly or through an activation.
#[derive(Debug, Clone, PartialEq)]
pub struct Holding {
    pub role: String,
    pub scope: Scope,
    /// None: permanent.
    pub until: Option<i64>,
    /// The direct active assignment, or the activation request, that gives it.
    pub assignment: Option<i64>,
    pub request: Option<i64>,
}

impl Pim {
    pub fn new(conn: Db, clock: Arc<dyn Clock>, vault: Vault) -> Pim {
        Pim {
            conn,
            clock,
            vault: Arc::new(vault),
            commands_for_root: false,
            queued: Vec::new(),
            budget: true,
        }
    }

    /// Changes made through this instance count against no budget (root's).
    pub fn without_budget(&mut self) {
        self.budget = false;
    }

    /// Refuse policies that add or change a notification command: in the installed pim those
    /// run as root, so only root may choose them.
    pub fn reserve_commands_for_root(&mut self) {
        self.commands_for_root = true;
    }

    /// The key of the TOTP secrets this database was opened with.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The connection, for the core's own tests.
    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Db {
        &self.conn
    }

    /// The policy in force.
    pub fn policy(&self) -> Result<Arc<Policy>> {
        load_policy(&self.conn)
    }

    /// Run `f` in one `IMMEDIATE` transaction. It commits on success, and also on an error
    /// marked `Recorded` (a refusal whose audit event `f` wrote), so that attempts stay on
    /// record; any other error rolls everything back.
    ///
    /// `actor`'s changes count against their budget (`users::CHANGES_PER_WINDOW` per 15
    /// minutes): past it, changes are refused until the window has passed, so that no account
    /// grows the log without bound, even through changes it may make.
    fn write<T>(
        &mut self,
        actor: &str,
        f: impl FnOnce(&Recorder<'_>, DateTime<Utc>, &Policy) -> Result<T>,
    ) -> Result<T> {
        let budget = self.budget.then(|| actor.to_string());
        self.write_as(budget, true, f)
    }

    /// `write` for the checks a command runs before its prompts (`plan_assignment`,
    /// `plan_activation`): refused as the change would be once the budget is spent, and a
    /// refusal is recorded, but a plan that passes is no change and costs nothing.
    fn plan<T>(
        &mut self,
        actor: &str,
        f: impl FnOnce(&Recorder<'_>, DateTime<Utc>, &Policy) -> Result<T>,
    ) -> Result<T> {
        let budget = self.budget.then(|| actor.to_string());
        self.write_as(budget, false, f)
    }

    /// `write` for what the system does (sweep, sign-ins, sealing) and for giving up a role
    /// or a request (never blocked by a budget): no budget.
    fn write_system<T>(
        &mut self,
        f: impl FnOnce(&Recorder<'_>, DateTime<Utc>, &Policy) -> Result<T>,
    ) -> Result<T> {
        self.write_as(None, false, f)
    }

    fn write_as<T>(
        &mut self,
        budget: Option<String>,
        charge: bool,
        f: impl FnOnce(&Recorder<'_>, DateTime<Utc>, &Policy) -> Result<T>,
    ) -> Result<T> {
        let tx = self.conn.write()?;
        let now = self.clock.now();
        if let Some(actor) = &budget {
            if let Some(until) =
                users::limited_until(&tx, users::Limited::Changes(actor), now.timestamp())?
            {
                return Err(Error::Refused(format!(
                    "{actor} made {} changes within 15 minutes; try again {}.",
                    users::CHANGES_PER_WINDOW,
                    crate::time::relative(crate::time::from_unix(until), now)
                )));
            }
        }
        let policy = load_policy(&tx)?;
        let mark = outbox_end(&tx)?;
        let rec = Recorder::new(&tx, now, &policy);
        let result = f(&rec, now, &policy);
        if let (Some(actor), Ok(_), true) = (&budget, &result, charge) {
            users::count_change(&rec, now, actor, 1)?;
        }
        if matches!(result, Ok(_) | Err(Error::Recorded(_))) {
            // Writers are serialised: what the outbox gained in this transaction is ours.
            let end = outbox_end(&tx)?;
            tx.commit()?;
            if end > mark {
                self.queued.push((mark, end));
            }
        }
        match result {
            Err(Error::Recorded(inner)) => Err(*inner),
            other => other,
        }
    }

    /// The outbox rows this process queued, to deliver after the command.
    pub fn queued(&self) -> &[(i64, i64)] {
        &self.queued
    }

    pub(crate) fn note_queued(&mut self, range: (i64, i64)) {
        if range.1 > range.0 {
            self.queued.push(range);
        }
    }
}

/// The last outbox row (0 when there is none).
pub(crate) fn outbox_end(conn: &Db) -> Result<i64> {
    conn.prepare_cached("SELECT coalesce(max(id), 0) FROM outbox")?
        .query_row(params![], |r| r.get(0))
}

/// The policy in force, parsed once per thread for as long as its text stays the same: a
/// command asks for it several times (`status`: for the viewer and for the list), and each
/// parse of the TOML took about 480,000 instructions, 9 % of `status` (callgrind). The text
/// is read from the store every time and is the key, so a policy applied since (by this
/// process or any other) is parsed again; parsing depends on nothing but the text.
pub(crate) fn load_policy(conn: &Db) -> Result<Arc<Policy>> {
    thread_local! {
        static PARSED: std::cell::RefCell<Option<Arc<Policy>>> = const { std::cell::RefCell::new(None) };
    }
    let source = conn.policy_source()?.ok_or_else(|| {
        Error::Environment(
            "The database has no policy: it was not initialised. Run `pim init` on a new file."
                .to_string(),
        )
    })?;
    if let Some(kept) = PARSED.with_borrow(|p| p.as_ref().filter(|p| p.source == source).cloned()) {
        return Ok(kept);
    }
    let parsed = Arc::new(Policy::parse(&source).map_err(|problems| {
        Error::Environment(format!(
            "The stored policy no longer parses ({}). Apply a corrected policy with `pim policy apply`.",
            problems[0]
        ))
    })?);
    PARSED.set(Some(parsed.clone()));
    Ok(parsed)
}

/// Write a refusal's audit event and return the error marked as recorded. A user who floods
/// the log with refused attempts is throttled: still refused, no longer recorded, for the
/// rest of the window (`users::REFUSALS_PER_WINDOW`).
pub(crate) fn refuse<T>(
    tx: &Recorder<'_>,
    now: DateTime<Utc>,
    event: Event,
    err: Error,
) -> Result<T> {
    let actor = event.actor.clone();
    users::refuse_limited(tx, now, users::Limited::User(&actor), event, err)
}

/// Every role `user_id` holds at `now`: direct active assignments and activations.
pub(crate) fn holdings(conn: &Db, user_id: i64, now: i64) -> Result<Vec<Holding>> {
    conn.holdings(user_id, now)?
        .into_iter()
        .map(|h| {
            Ok(Holding {
                role: h.role,
                scope: Scope::parse(&h.scope)?,
                until: h.until,
                assignment: h.assignment,
                request: h.request,
            })
        })
        .collect()
}

/// Whether `user` may use `permission` over `scope` at `now`.
pub(crate) fn has_permission(
    conn: &Db,
    policy: &Policy,
    user: &User,
    permission: &str,
    scope: &Scope,
    now: i64,
) -> Result<bool> {
    if user.disabled {
        return Ok(false);
    }
    Ok(grants(
        policy,
        &holdings(conn, user.id, now)?,
        permission,
        scope,
    ))
}

/// Whether any of `held` (an enabled user's holdings) gives `permission` over `scope`.
pub(crate) fn grants(policy: &Policy, held: &[Holding], permission: &str, scope: &Scope) -> bool {
    held.iter().any(|h| {
        h.scope.covers(scope)
            && policy
                .roles
                .get(&h.role)
                .is_some_and(|r| r.grants(permission))
    })
}

/// Refuse (without an audit event) unless `user` may use `permission` over `scope`.
pub(crate) fn require(
    conn: &Db,
    policy: &Policy,
    user: &User,
    permission: &str,
    scope: &Scope,
    now: i64,
) -> Result<()> {
    if has_permission(conn, policy, user, permission, scope, now)? {
        Ok(())
    } else {
        Err(permission_error(permission, scope))
    }
}

pub(crate) fn permission_error(permission: &str, scope: &Scope) -> Error {
    Error::Refused(format!(
        "You need the '{permission}' permission over {scope}. Activate a role that grants it (see `pim role list`)."
    ))
}

/// The acting principal, which must be an enabled pim user.
pub(crate) fn actor_user(conn: &Db, name: &str) -> Result<User> {
    match users::find(conn, name)? {
        Some(u) if u.disabled => Err(disabled_actor(name)),
        Some(u) => Ok(u),
        None => Err(not_a_user(name)),
    }
}

fn disabled_actor(name: &str) -> Error {
    Error::Refused(format!(
        "Your pim account '{name}' is disabled. Ask an administrator to enable it."
    ))
}

pub(crate) fn not_a_user(name: &str) -> Error {
    Error::Refused(format!(
        "'{name}' is not a pim user (pim takes you to be '{name}': your OS account, or --as/PIM_USER). Act as a pim user with --as NAME, or ask an administrator to run `pim user add {name}`. See `pim whoami`."
    ))
}

/// The acting principal of a change that grants roles: an enabled pim user. Anyone else is
/// refused on record (`event`), so that attempts by strangers and disabled accounts stay in
/// the log; a stranger's attempts are rate-limited per operating-system account.
pub(crate) fn acting_user(
    conn: &Recorder<'_>,
    now: DateTime<Utc>,
    actor: &str,
    event: Event,
) -> Result<User> {
    match users::find(conn, actor)? {
        Some(u) if !u.disabled => Ok(u),
        Some(_) => refuse(conn, now, event, disabled_actor(actor)),
        None => {
            let who = users::Limited::Account(actor);
            if let Some(until) = users::limited_until(conn, who, now.timestamp())? {
                return Err(Error::Refused(format!(
                    "Too many refused attempts from the account {actor}; try again {}.",
                    crate::time::relative(crate::time::from_unix(until), now)
                )));
            }
            users::refuse_limited(conn, now, who, event, not_a_user(actor))
        }
    }
}

/// Whether removing `user_id`'s holding (or all of a user's, when `assignment` is None)
/// would leave a protected role without a lasting holder. The thing removed counts when it
/// is an active assignment in effect or a permanent eligible one; what must remain is a
/// *permanent* holder (active or eligible), because a time-bound one would leave the role
/// orphaned the moment it expires.
pub(crate) fn would_orphan_protected(
    conn: &Db,
    role: &str,
    user_id: i64,
    assignment: Option<i64>,
    now: i64,
) -> Result<bool> {
    let (holder, permanent_others) = conn.protected_holders(role, user_id, assignment, now)?;
    Ok(holder && permanent_others == 0)
}

impl Pim {
    /// Deliver the notifications that are due (new ones, and retries whose time has come).
    /// Failures are recorded and retried; they never undo the change that queued them.
    pub fn deliver(
        &mut self,
        actor: &str,
        scope: crate::notify::Scope,
    ) -> Result<crate::notify::Delivery> {
        let policy = self.policy()?;
        let now = self.clock.now();
        crate::notify::deliver_due(&mut self.conn, &policy, now, actor, scope)
    }

    /// Record that `actor` (root) ended a stopped process that held the database's locks.
    pub fn record_lock_break(
        &mut self,
        actor: &str,
        holder: &crate::store::LockHolder,
        why: &str,
    ) -> Result<()> {
        self.write_system(|tx, _, _| {
            tx.record(
                Event::new(actor, "lock.break")
                    .principal(&holder.user)
                    .detail("pid", holder.pid)
                    .detail("uid", holder.uid)
                    .detail("reason", why),
            )?;
            Ok(())
        })
    }

    /// The notification outbox (or only what was given up).
    pub fn outbox(&self, failed_only: bool) -> Result<Vec<crate::notify::Outgoing>> {
        crate::notify::list(&self.conn, failed_only)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::clock::{Clock, FixedClock};

    pub const POLICY: &str = r#"
[defaults]
max_activation = "8h"

[roles.global-admin]
name = "Global Administrator"
permissions = ["*"]
protected = true
max_eligible = "permanent"
max_active = "permanent"

[roles.db-admin]
name = "Database Administrator"
max_activation = "4h"
justification_pattern = "^INC"

[roles.ticketed]
name = "Ticketed"
require_ticket = true
require_mfa = false

[roles.approved]
name = "Approved Role"
require_approval = true

[roles.user-admin]
name = "User Administrator"
permissions = ["users"]
"#;

    pub fn start() -> DateTime<Utc> {
        crate::time::parse_instant("2026-12-01T09:00:00Z").unwrap()
    }

    /// A database initialised by `root` with `admin` as the break-glass administrator.
    pub fn pim() -> (Pim, Arc<FixedClock>, Vec<u8>) {
        pim_with(POLICY)
    }

    /// `pim()` with another policy.
    pub fn pim_with(policy: &str) -> (Pim, Arc<FixedClock>, Vec<u8>) {
        let clock = Arc::new(FixedClock::new(start()));
        let conn = crate::store::test_db();
        let (pim, enrollment) = Pim::init(
            conn,
            clock.clone(),
            Vault::ephemeral(),
            "root",
            "admin",
            None,
            policy,
        )
        .unwrap();
        let secret = crate::mfa::from_base32(&enrollment.secret).unwrap();
        let mut pim = pim;
        confirm(&mut pim, "admin", &secret);
        (pim, clock, secret)
    }

    /// Confirm `name`'s pending enrolment with the previous step's code (the current one
    /// stays free for what the test does next).
    pub fn confirm(pim: &mut Pim, name: &str, secret: &[u8]) {
        let code = crate::mfa::code_at(secret, pim.now().timestamp() - 30);
        pim.confirm_enrolment(name, &code).unwrap();
    }

    /// `name` enrols their own authenticator and confirms it.
    pub fn enrol(pim: &mut Pim, name: &str) -> crate::ops::Enrollment {
        let e = pim.enroll(name, None, None).unwrap();
        let secret = crate::mfa::from_base32(&e.secret).unwrap();
        confirm(pim, name, &secret);
        e
    }

    pub fn code(clock: &FixedClock, secret: &[u8]) -> String {
        crate::mfa::code_at(secret, clock.now().timestamp())
    }

    /// A code that is none of `secret`'s from two steps before the clock's to two after (a
    /// fixed "000000" is a valid code about once in 330,000 tries).
    pub fn wrong_code(clock: &FixedClock, secret: &[u8]) -> String {
        let t = clock.now().timestamp();
        let near: Vec<String> = (-2..=2)
            .map(|k| crate::mfa::code_at(secret, t + 30 * k))
            .collect();
        (0u32..)
            .map(|n| format!("{:06}", (n * 7919) % 1_000_000))
            .find(|c| !near.contains(c))
            .unwrap()
    }

    pub fn count_events(pim: &Pim, action: &str) -> i64 {
        pim.conn()
            .query_row(
                "SELECT count(*) FROM audit_events WHERE action = ?1",
                params![action],
                |r| r.get(0),
            )
            .unwrap()
    }
}
