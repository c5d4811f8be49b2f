//! Access reviews: reviewers (or each user, in a self-review) decide keep or remove for every
//! assignment of a role as it stood when the review started; completion applies the decisions
//! and the review's default to the undecided. Recurring reviews start again on schedule.

use super::assignments::unknown_role_in;
use super::Recorder;
use super::{
    actor_user, has_permission, permission_error, refuse, users, would_orphan_protected, Pim,
};
use crate::audit::Event;
use crate::error::{Error, Result};
use crate::model::{Kind, Status};
use crate::notify::Notice;
use crate::policy::Policy;
use crate::scope::Scope;
use crate::store::requests::Of;
use crate::store::reviews::{NewItem, NewReview, Pending as ReviewPending, Recurring, UserFacts};
use crate::store::Db;
use crate::time::{from_unix, rfc3339};
use chrono::{DateTime, Duration, Utc};

/// An eligible assignment not activated in this long is recommended for removal.
pub const UNUSED_DAYS: i64 = 30;

#[derive(Debug, Clone)]
pub struct ReviewInput {
    pub role: String,
    pub scope: Scope,
    /// Named reviewers; empty with `self_review`.
    pub reviewers: Vec<String>,
    pub self_review: bool,
    pub duration: Option<Duration>,
    /// `keep`, `remove` or `recommendation`.
    pub default: String,
    /// `weekly`, `monthly`, `quarterly`, `semiannual` or `annual`.
    pub every: Option<String>,
    pub name: Option<String>,
}

pub use crate::store::reviews::{Review, ReviewItem};

fn period(every: &str) -> Option<Duration> {
    Some(match every {
        "weekly" => Duration::days(7),
        "monthly" => Duration::days(30),
        "quarterly" => Duration::days(91),
        "semiannual" => Duration::days(182),
        "annual" => Duration::days(365),
        _ => return None,
    })
}

/// keep or remove, and why, for one assignment (made at `since`) of a user (disabled or not,
/// when they last activated the role) at `now`. The 30 days of
/// disuse count from the assignment's start when it is younger: a new one is kept.
fn recommend(user: UserFacts, kind: Kind, since: i64, now: i64) -> (String, String) {
    if user.disabled {
        return ("remove".into(), "the user is disabled".into());
    }
    if kind == Kind::Active {
        return (
            "keep".into(),
            "a direct active assignment (nothing to activate)".into(),
        );
    }
    let last = user.last_activation;
    if since > now - UNUSED_DAYS * 86_400 && last.is_none_or(|t| t < since) {
        return (
            "keep".into(),
            format!(
                "new: assigned {} day(s) ago, less than {UNUSED_DAYS}",
                (now - since).max(0) / 86_400
            ),
        );
    }
    match last {
        Some(t) if t >= now - UNUSED_DAYS * 86_400 => (
            "keep".into(),
            format!("activated {} day(s) ago", (now - t) / 86_400),
        ),
        Some(t) => (
            "remove".into(),
            format!(
                "not activated in {UNUSED_DAYS} days (last {} days ago)",
                (now - t) / 86_400
            ),
        ),
        None => (
            "remove".into(),
            format!("never activated (eligible, unused for {UNUSED_DAYS} days or more)"),
        ),
    }
}

fn load(conn: &Db, id: i64, now: i64) -> Result<Review> {
    conn.review(id, now)?
        .ok_or_else(|| Error::NotFound(format!("There is no review {id}. See `pim review list`.")))
}

/// Create a review and its items (the role's assignments at `scope` and below, now).
#[allow(clippy::too_many_arguments)]
fn start_review(
    conn: &Recorder<'_>,
    _policy: &Policy,
    now: DateTime<Utc>,
    actor: &str,
    role: &str,
    scope: &Scope,
    reviewers: &[String],
    self_review: bool,
    duration: Duration,
    default: &str,
    every: Option<&str>,
    name: &str,
) -> Result<i64> {
    let t = now.timestamp();
    let id = conn.insert_review(&NewReview {
        name,
        role,
        scope: scope.as_str(),
        self_review,
        reviewers,
        default,
        every,
        duration_secs: duration.num_seconds(),
        created_by: actor,
        created_at: t,
    })?;
    // What the recommendations need of every holder, read at once (not a user at a time),
    // and the items stored in multi-row statements.
    let facts = conn.review_facts(role, t)?;
    let mut people = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for a in conn.live_assignments_of_role(role, t)? {
        if !Scope::parse(&a.scope).is_ok_and(|s| scope.covers(&s)) {
            continue;
        }
        // Every holder is in `facts` (the same assignments, at the same instant).
        let user = facts.get(&a.user_id).copied().unwrap_or_default();
        let (recommendation, reason) = recommend(user, a.kind, a.start_at, t);
        if seen.insert(a.user_id) {
            people.push(a.user.clone());
        }
        rows.push(NewItem {
            assignment: a.id,
            user: a.user,
            scope: a.scope,
            kind: a.kind,
            recommendation,
            reason,
        });
    }
    conn.insert_review_items(id, role, &rows)?;
    let items = rows.len() as i64;
    let event = Event::new(actor, "review.create")
        .role(role)
        .scope(scope.as_str())
        .expires(Some(t + duration.num_seconds()))
        .detail("review", id)
        .detail("name", name)
        .detail(
            "reviewers",
            if self_review {
                vec!["(self)".to_string()]
            } else {
                reviewers.to_vec()
            },
        )
        .detail("items", items)
        .detail("default", default)
        .detail("every", every.unwrap_or(""));
    let to = if self_review {
        people
    } else {
        reviewers.to_vec()
    };
    let text = format!(
        "Access review {id} \"{name}\" of {role} at {scope} is open until {}: decide keep or remove with `pim review decide {id} USER keep|remove -j WHY`.",
        rfc3339(from_unix(t + duration.num_seconds()))
    );
    conn.record_with(
        event,
        Notice::new("review.create", now, actor, text)
            .role(role, scope.as_str())
            .to(to),
    )?;
    Ok(id)
}

/// Apply a review: decisions, then the default for the undecided; the last holder of a
/// protected role is kept.
fn complete_review(
    conn: &Recorder<'_>,
    policy: &Policy,
    now: DateTime<Utc>,
    actor: &str,
    id: i64,
) -> Result<()> {
    let t = now.timestamp();
    let review = load(conn, id, t)?;
    let (mut kept, mut removed, mut protected) = (0, 0, 0);
    for ReviewPending {
        item,
        assignment,
        user,
        kind,
        recommendation,
        decision,
    } in conn.review_items_pending(id)?
    {
        let applied = match decision {
            Some(d) => d,
            None if review.default == "recommendation" => recommendation,
            None => review.default.clone(),
        };
        let current = conn
            .assignment_fate(assignment)?
            .map(|f| (f.user_id, f.removed_at, f.end_at, f.scope));
        let result = match current {
            None => "the assignment no longer exists".to_string(),
            Some((_, Some(_), _, _)) => "already removed".to_string(),
            Some((_, _, Some(end), _)) if end <= t => "already ended".to_string(),
            Some(_) if applied == "keep" => {
                kept += 1;
                "kept".to_string()
            }
            Some((user_id, _, _, scope)) => {
                let role = policy.roles.get(&review.role);
                if role.is_some_and(|r| r.protected)
                    && would_orphan_protected(conn, &review.role, user_id, Some(assignment), t)?
                {
                    protected += 1;
                    format!(
                        "kept: {user} is the last holder of the protected role {}",
                        review.role
                    )
                } else {
                    conn.remove_assignment(assignment, t, actor)?;
                    conn.record(
                        Event::new(actor, "assignment.remove")
                            .principal(&user)
                            .role(&review.role)
                            .scope(&scope)
                            .detail("type", kind)
                            .detail("assignment", assignment)
                            .detail("review", id),
                    )?;
                    super::activation::end_activations(
                        conn,
                        policy,
                        now,
                        actor,
                        Of::Eligibility(assignment),
                        Status::Revoked,
                        "activation.revoke",
                        "removed by an access review",
                    )?;
                    removed += 1;
                    "removed".to_string()
                }
            }
        };
        conn.review_item_applied(item, &applied, &result)?;
    }
    conn.review_completed(id, t, actor)?;
    conn.record(
        Event::new(actor, "review.complete")
            .role(&review.role)
            .scope(&review.scope)
            .detail("review", id)
            .detail("kept", kept)
            .detail("removed", removed)
            .detail("kept_as_last_protected_holder", protected)
            .detail("decided", review.decided)
            .detail("total", review.total),
    )?;
    Ok(())
}

/// Complete reviews whose time is up and start the next of recurring ones (for `sweep`).
pub(crate) fn sweep_reviews(
    conn: &Recorder<'_>,
    policy: &Policy,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<(Vec<i64>, Vec<i64>)> {
    let t = now.timestamp();
    let due = conn.reviews_due(t)?;
    for id in &due {
        complete_review(conn, policy, now, actor, *id)?;
    }
    let mut started = Vec::new();
    for Recurring {
        id,
        name,
        role,
        scope,
        reviewers,
        self_review,
        default,
        duration_secs: duration,
        every,
        created_at: created,
    } in conn.reviews_recurring()?
    {
        let Some(p) = period(&every) else { continue };
        if t < created + p.num_seconds() || !policy.roles.contains_key(&role) {
            continue;
        }
        conn.review_next_started(id)?;
        let next = start_review(
            conn,
            policy,
            now,
            actor,
            &role,
            &Scope::parse(&scope)?,
            &reviewers,
            self_review,
            Duration::seconds(duration),
            &default,
            Some(&every),
            &name,
        )?;
        started.push(next);
    }
    Ok((due, started))
}

/// What someone tried with a review they may not see ([`Pim::refuse_unseen_review`]).
#[derive(Debug, Clone, Copy)]
pub enum Unseen<'a> {
    Decide { user: &'a str, decision: &'a str },
    Complete,
}

impl Pim {
    /// Start an access review (permission `review` over the scope).
    pub fn create_review(&mut self, actor: &str, input: ReviewInput) -> Result<Review> {
        crate::limits::check_opt(
            "review name",
            input.name.as_deref(),
            crate::limits::REVIEW_NAME,
        )?;
        if let Some(n) = &input.name {
            crate::limits::one_line("review name", n)?;
        }
        let budget = self.budget;
        self.write(actor, |tx, now, policy| {
            let me = actor_user(tx, actor)?;
            let role = policy
                .role(&input.role)
                .ok_or_else(|| unknown_role_in(policy, &input.role))?;
            let t = now.timestamp();
            if !has_permission(tx, policy, &me, "review", &input.scope, t)? {
                return refuse(
                    tx,
                    now,
                    Event::new(actor, "review.create")
                        .role(&role.key)
                        .scope(input.scope.as_str()),
                    permission_error("review", &input.scope),
                );
            }
            if input.self_review != input.reviewers.is_empty() {
                return Err(Error::Usage(
                    "Name the reviewers with --reviewer, or give --self (not both).".to_string(),
                ));
            }
            for r in &input.reviewers {
                users::get(tx, r)?;
            }
            if !["keep", "remove", "recommendation"].contains(&input.default.as_str()) {
                return Err(Error::Usage(
                    "--default is keep, remove or recommendation.".to_string(),
                ));
            }
            let duration = input.duration.unwrap_or(Duration::days(14));
            if let Some(e) = &input.every {
                let Some(p) = period(e) else {
                    return Err(Error::Usage(
                        "--every is weekly, monthly, quarterly, semiannual or annual.".to_string(),
                    ));
                };
                // One review of a series ends before the next starts: two at once would
                // decide the same assignments twice, the later default undoing the earlier
                // decision.
                if duration >= p {
                    return Err(Error::Usage(format!(
                        "A {e} review runs for less than its period ({}); give a shorter --duration than {}.",
                        crate::time::format_duration(p),
                        crate::time::format_duration(duration)
                    )));
                }
            }
            let name = input.name.clone().unwrap_or_else(|| {
                format!(
                    "{} review of {} at {}",
                    input.every.as_deref().unwrap_or("one-off"),
                    role.key,
                    input.scope
                )
            });
            let id = start_review(
                tx,
                policy,
                now,
                actor,
                &role.key,
                &input.scope,
                &input.reviewers,
                input.self_review,
                duration,
                &input.default,
                input.every.as_deref(),
                &name,
            )?;
            let review = load(tx, id, t)?;
            // A review of many assignments costs the budget like a bulk change of as many rows.
            if budget && review.total >= 1000 {
                super::users::count_change(
                    tx,
                    now,
                    actor,
                    super::users::bulk_units(review.total as usize) - 1,
                )?;
            }
            Ok(review)
        })
    }

    pub fn review(&self, id: i64) -> Result<Review> {
        load(&self.conn, id, self.now().timestamp())
    }

    /// Decide keep or remove for USER's assignments in a review: a named reviewer, or in a
    /// self-review the user themself. A decision can change until the review completes.
    pub fn decide_review(
        &mut self,
        actor: &str,
        id: i64,
        user: &str,
        decision: &str,
        justification: &str,
    ) -> Result<Review> {
        crate::limits::check("justification", justification, crate::limits::JUSTIFICATION)?;
        // Whoever may not see the review learns nothing of it here either (not its state,
        // nor who its reviewers are): "not there", exit 4, as `review show` says; the attempt
        // is on record all the same, with nothing of the review but the number they gave.
        match self.review_seen_by(&self.viewer(actor)?, id) {
            Ok(_) => {}
            Err(Error::NotFound(_)) => {
                return Err(self.refuse_unseen_review(actor, id, Unseen::Decide { user, decision }))
            }
            Err(e) => return Err(e),
        }
        self.write(actor, |tx, now, _| {
            actor_user(tx, actor)?;
            let t = now.timestamp();
            let review = load(tx, id, t)?;
            let event = Event::new(actor, "review.decide")
                .principal(user)
                .role(&review.role)
                .scope(&review.scope)
                .justification(Some(justification))
                .detail("review", id)
                .detail("decision", decision);
            if review.state == "completed" {
                return Err(Error::Conflict(format!(
                    "Review {id} is completed; its decisions are final."
                )));
            }
            // Its time is up: what was decided stands, the rest gets its default when it
            // completes (the next sweep, or `pim review complete`).
            if review.state == "due" {
                return Err(Error::Conflict(format!(
                    "Review {id} closed at {}; it takes no more decisions, and what was left undecided gets its default ({}) when it completes.",
                    review.end, review.default
                )));
            }
            if !["keep", "remove"].contains(&decision) {
                return Err(Error::Usage("Decide keep or remove.".to_string()));
            }
            if justification.trim().is_empty() {
                return Err(Error::Usage(
                    "A review decision needs a reason. Pass -j/--justification.".to_string(),
                ));
            }
            let allowed = if review.self_review {
                actor == user
            } else {
                review.reviewers.iter().any(|r| r == actor)
            };
            if allowed && !review.self_review && actor == user {
                // A reviewer does not keep their own access: another reviewer decides, or
                // the review's default does.
                return refuse(
                    tx,
                    now,
                    event,
                    Error::Refused(format!(
                        "You cannot decide about your own access in review {id}; another of its reviewers does, or its default ({}) applies.",
                        review.default
                    )),
                );
            }
            if !allowed {
                let why = if review.self_review {
                    "In a self-review each user decides only about their own access.".to_string()
                } else {
                    format!(
                        "Only the review's reviewers ({}) decide in review {id}.",
                        review.reviewers.join(", ")
                    )
                };
                return refuse(tx, now, event, Error::Refused(why));
            }
            let changed =
                tx.decide_review_items(id, user, decision, actor, justification.trim(), t)?;
            if changed == 0 {
                return Err(Error::NotFound(format!(
                    "Review {id} has no assignment of {user}. See `pim review show {id}`."
                )));
            }
            tx.record(event)?;
            load(tx, id, t)
        })
    }

    /// Refuse an attempt at review `id` that `actor` may not see (or that is not there):
    /// exit 4, as `review show` says, and on record with nothing of the review but the
    /// number given. The prompts of `review decide` and `complete` come to this as well.
    pub fn refuse_unseen_review(&mut self, actor: &str, id: i64, what: Unseen<'_>) -> Error {
        let not_there = || {
            Error::NotFound(format!(
                "There is no review {id} that you may see. See `pim review list`."
            ))
        };
        let refused = self.write(actor, |tx, now, _| -> Result<()> {
            actor_user(tx, actor)?;
            let event = match what {
                Unseen::Decide { user, decision } => Event::new(actor, "review.decide")
                    .principal(user)
                    .detail("decision", decision),
                Unseen::Complete => Event::new(actor, "review.complete"),
            };
            refuse(tx, now, event.detail("review", id), not_there())
        });
        match refused {
            Err(e) => e,
            Ok(()) => not_there(),
        }
    }

    /// Apply a review now (its creator, or a holder of `review` over its scope).
    pub fn complete_review(&mut self, actor: &str, id: i64) -> Result<Review> {
        // As with a decision: whoever may not see the review learns nothing of it (not that
        // it is completed, nor its role and scope), and the attempt is on record with its
        // number alone.
        match self.review_seen_by(&self.viewer(actor)?, id) {
            Ok(_) => {}
            Err(Error::NotFound(_)) => {
                return Err(self.refuse_unseen_review(actor, id, Unseen::Complete))
            }
            Err(e) => return Err(e),
        }
        self.write(actor, |tx, now, policy| {
            let me = actor_user(tx, actor)?;
            let t = now.timestamp();
            let review = load(tx, id, t)?;
            if review.state == "completed" {
                return Err(Error::Conflict(format!(
                    "Review {id} is already completed."
                )));
            }
            let scope = Scope::parse(&review.scope)?;
            if review.created_by != actor && !has_permission(tx, policy, &me, "review", &scope, t)?
            {
                return refuse(
                    tx,
                    now,
                    Event::new(actor, "review.complete")
                        .role(&review.role)
                        .scope(&review.scope)
                        .detail("review", id),
                    permission_error("review", &scope),
                );
            }
            complete_review(tx, policy, now, actor, id)?;
            load(tx, id, t)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{AssignInput, End};
    use super::*;

    fn eligible(pim: &mut Pim, user: &str) {
        pim.add_user("admin", user, None, None).unwrap();
        pim.assign(
            "admin",
            AssignInput {
                user: user.into(),
                role: "db-admin".into(),
                scope: Scope::parse("/prod").unwrap(),
                active: false,
                start: None,
                end: End::PolicyMax,
                justification: Some("team".into()),
                ticket: None,
            },
        )
        .unwrap();
    }

    #[test]
    fn reviews_expire_and_recur_under_the_injected_clock() {
        let (mut pim, clock, _) = pim();
        eligible(&mut pim, "bob");
        eligible(&mut pim, "carol");
        let review = pim
            .create_review(
                "admin",
                ReviewInput {
                    role: "Database Administrator".into(),
                    scope: Scope::root(),
                    reviewers: vec!["admin".into()],
                    self_review: false,
                    duration: None,
                    default: "keep".into(),
                    every: Some("monthly".into()),
                    name: None,
                },
            )
            .unwrap();
        assert_eq!(review.total, 2);
        // Assigned this very second: new, so kept (not "unused for 30 days").
        assert!(
            review.items.iter().all(|i| i.recommendation == "keep"
                && i.reason.starts_with("new: assigned 0 day(s) ago")),
            "{:?}",
            review.items
        );
        pim.decide_review("admin", review.id, "bob", "remove", "left")
            .unwrap();
        clock.advance(Duration::days(14) - Duration::seconds(1));
        assert_eq!(pim.review(review.id).unwrap().state, "open");
        assert!(pim.sweep("cron").unwrap().reviews_completed.is_empty());
        clock.advance(Duration::seconds(1));
        assert_eq!(pim.review(review.id).unwrap().state, "due");
        assert_eq!(
            pim.sweep("cron").unwrap().reviews_completed,
            vec![review.id]
        );
        let done = pim.review(review.id).unwrap();
        let result = |u: &str| {
            done.items
                .iter()
                .find(|i| i.user == u)
                .unwrap()
                .result
                .clone()
                .unwrap()
        };
        assert_eq!(result("bob"), "removed");
        assert_eq!(
            result("carol"),
            "kept",
            "the default applies to the undecided"
        );
        // A month after it started, the next one starts, once, over what stands now.
        clock.advance(Duration::days(16));
        let started = pim.sweep("cron").unwrap().reviews_started;
        assert_eq!(started.len(), 1);
        assert!(pim.sweep("cron").unwrap().reviews_started.is_empty());
        let next = pim.review(started[0]).unwrap();
        assert_eq!(next.total, 1);
        assert_eq!(next.items[0].user, "carol");
        // Thirty days after the assignment, never activated: removal is recommended.
        assert_eq!(next.items[0].recommendation, "remove", "{:?}", next.items);
        assert!(next.items[0].reason.starts_with("never activated"));
        assert_eq!(count_events(&pim, "review.create"), 2);
        assert!(crate::audit::verify(pim.conn()).unwrap().ok);
    }
}
