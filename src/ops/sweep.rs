//! `pim sweep`: record in the audit log what time has already decided (starts and
//! expirations). Decisions never wait for it; it only writes them down, once.

use super::Pim;
use crate::audit::Event;
use crate::error::Result;
use crate::store::requests::Due;
use crate::time::{from_unix, rfc3339};
use serde::Serialize;
use std::collections::HashSet;

#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    pub started: Vec<i64>,
    pub expired_activations: Vec<i64>,
    pub expired_assignments: Vec<i64>,
    pub timed_out: Vec<i64>,
    /// Assignments whose holders were reminded that they end within 14 days or 1 day.
    pub reminded: Vec<i64>,
    pub reviews_completed: Vec<i64>,
    pub reviews_started: Vec<i64>,
}

/// At most this many items (starts, expirations, timeouts, reminders) are written down per
/// transaction: a sweep over 100,000 expirations holds the write lock a few milliseconds at a
/// time, and other commands get in between.
const PER_TRANSACTION: i64 = 200;

/// ... or for at most this long (a server's round trips make an item cost more there).
const HOLD_AT_MOST: std::time::Duration = std::time::Duration::from_millis(40);

impl Pim {
    /// Write down what time has decided, in short transactions of `PER_TRANSACTION` items
    /// until nothing is left, then complete and start reviews. Each item is written down once
    /// whatever happens between the transactions (its row says it is recorded).
    pub fn sweep(&mut self, actor: &str) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        self.sweep_batches(actor, &mut report)?;
        self.write_system(|tx, now, policy| {
            let (completed, started) = super::reviews::sweep_reviews(tx, policy, now, actor)?;
            report.reviews_completed = completed;
            report.reviews_started = started;
            // For `pim doctor`: a sweep that ran, wherever it runs (a timer here, a job
            // on another host of a shared server).
            tx.set_last_sweep(now.timestamp())?;
            // This transaction waits for its flush, and so for every batch's.
            tx.flushed()?;
            Ok(())
        })?;
        Ok(report)
    }

    /// The sweep's batches, `sweep_some` each: on PostgreSQL committed without waiting for
    /// their flush, so that no writer queued behind one waits for it (`Db::unflushed_writes`).
    fn sweep_batches(&mut self, actor: &str, report: &mut SweepReport) -> Result<()> {
        let mut reminded = HashSet::new();
        self.conn.unflushed_writes(true);
        let done = loop {
            match self.write_system(|tx, now, policy| {
                sweep_some(tx, now, policy, actor, report, &mut reminded)
            }) {
                // A moment between transactions, in which a waiting writer takes the lock.
                Ok(true) => std::thread::sleep(std::time::Duration::from_millis(2)),
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.conn.unflushed_writes(false);
        done
    }
}

/// Up to `PER_TRANSACTION` items of the sweep, for up to `HOLD_AT_MOST`; whether there may
/// be more.
fn sweep_some(
    tx: &super::Recorder<'_>,
    now: chrono::DateTime<chrono::Utc>,
    policy: &crate::policy::Policy,
    actor: &str,
    report: &mut SweepReport,
    reminded: &mut HashSet<i64>,
) -> Result<bool> {
    let t = now.timestamp();
    let mut budget = Budget {
        started: std::time::Instant::now(),
        done: 0,
    };
    // Each kind of item: its rows changed one by one (requests move from a status they
    // must still have) or together, then its events appended together.
    let mut events = Vec::new();
    let due = tx.requests_due(t, budget.left())?;
    for Due {
        id,
        user,
        role,
        scope,
        at: mut end,
    } in due
    {
        if !budget.take() {
            break;
        }
        if end > t {
            // It runs no longer than its role allows from now, nor past its eligibility,
            // whatever the row says (a scheduled row is the database's word alone until this
            // event; `audit verify --state` compares it with what was asked).
            let longest = policy
                .role(&role)
                .map(|r| t + r.settings.max_activation.num_seconds());
            let capped = [Some(end), longest, tx.request_eligibility_end(id)?]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(end);
            if capped < end {
                end = capped.max(t);
                tx.set_request_end(id, end)?;
            }
        }
        let event = |action: &str| {
            Event::new(actor, action)
                .principal(&user)
                .role(&role)
                .scope(&scope)
                .request(id)
                .expires(Some(end))
        };
        if end > t {
            tx.request_started(id)?;
            events.push(event("activation.start"));
            report.started.push(id);
        } else {
            tx.request_expired(id)?;
            events.push(event("activation.expire").detail("ended_at", rfc3339(from_unix(end))));
            report.expired_activations.push(id);
        }
    }
    tx.record_all(std::mem::take(&mut events))?;
    if budget.left() == 0 {
        return Ok(true);
    }
    let late = tx.requests_timed_out(t, budget.left())?;
    for Due {
        id,
        user,
        role,
        scope,
        at: deadline,
    } in late
    {
        if !budget.take() {
            break;
        }
        tx.request_timed_out(id)?;
        events.push(
            Event::new(actor, "activation.timeout")
                .principal(&user)
                .role(&role)
                .scope(&scope)
                .request(id)
                .detail("decide_by", rfc3339(from_unix(deadline))),
        );
        report.timed_out.push(id);
    }
    tx.record_all(std::mem::take(&mut events))?;
    if budget.left() == 0 {
        return Ok(true);
    }
    let mut ids = Vec::new();
    for a in tx.ended_unrecorded(t, budget.left())? {
        if !budget.take() {
            break;
        }
        let (id, user, role, scope, kind) = (a.id, a.user, a.role, a.scope, a.kind);
        let end = a.end_at.unwrap_or(t);
        ids.push(id);
        events.push(
            Event::new(actor, "assignment.expire")
                .principal(&user)
                .role(&role)
                .scope(&scope)
                .expires(Some(end))
                .detail("type", kind)
                .detail("assignment", id)
                .detail("ended_at", rfc3339(from_unix(end))),
        );
    }
    tx.expiry_recorded(&ids)?;
    tx.record_all(std::mem::take(&mut events))?;
    report.expired_assignments.extend(ids);
    // Reminders 14 days and 1 day before an assignment ends, each sent once.
    for (kind, days, lower) in [("1d", 1, 0), ("14d", 14, 86_400)] {
        if budget.left() == 0 {
            return Ok(true);
        }
        let ending = tx.ending_unreminded(t + lower, t + days * 86_400, kind, budget.left())?;
        for a in ending {
            if !budget.take() {
                break;
            }
            let id = a.id;
            let end = a.end_at.unwrap_or(t);
            tx.insert_reminder(id, kind)?;
            events.push(
                Event::new(actor, "assignment.remind")
                    .principal(&a.user)
                    .role(&a.role)
                    .scope(&a.scope)
                    .expires(Some(end))
                    .detail("type", a.kind)
                    .detail("assignment", id)
                    .detail("reminder", kind),
            );
            if reminded.insert(id) {
                report.reminded.push(id);
            }
        }
        tx.record_all(std::mem::take(&mut events))?;
    }
    Ok(budget.left() == 0)
}

/// What one transaction of the sweep may still write down: `PER_TRANSACTION` items, within
/// `HOLD_AT_MOST` (the first item always, however slow: the sweep always ends).
struct Budget {
    started: std::time::Instant,
    done: i64,
}

impl Budget {
    /// How many more items a query may fetch.
    fn left(&self) -> i64 {
        PER_TRANSACTION - self.done
    }

    /// Whether one more item fits; it is counted. Once time is up nothing more fits.
    fn take(&mut self) -> bool {
        if self.done > 0 && self.started.elapsed() >= HOLD_AT_MOST {
            self.done = PER_TRANSACTION;
        }
        if self.left() == 0 {
            return false;
        }
        self.done += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{ActivationInput, AssignInput, End};
    use crate::scope::Scope;
    use chrono::Duration;

    /// Whether the log is marked as possibly unflushed (`Db::unflushed_writes`).
    fn marked(pim: &crate::Pim) -> bool {
        pim.conn().marked_unflushed()
    }

    /// An eligibility of `user` for `ticketed` at `scope`, ending in an hour; its id.
    fn eligible_for_an_hour(pim: &mut crate::Pim, user: &str, scope: &str) -> i64 {
        pim.assign(
            "admin",
            AssignInput {
                user: user.into(),
                role: "ticketed".into(),
                scope: Scope::parse(scope).unwrap(),
                active: false,
                start: None,
                end: End::After(Duration::hours(1)),
                justification: Some("x".into()),
                ticket: Some("T-1".into()),
            },
        )
        .unwrap()
        .id
    }

    /// Each of the sweep's batches marks the log unflushed on PostgreSQL (a batch commits
    /// without waiting for its flush there), until the sweep's last transaction; SQLite's
    /// never.
    #[test]
    fn a_sweep_batch_marks_the_log_unflushed_on_postgresql() {
        let (mut pim, clock, _) = pim();
        pim.add_user("admin", "u0", None, None).unwrap();
        eligible_for_an_hour(&mut pim, "u0", "/s");
        clock.advance(Duration::hours(2));
        let postgres = pim.conn().backend() == crate::store::Backend::Postgres;
        let mut report = super::SweepReport::default();
        pim.sweep_batches("cron", &mut report).unwrap();
        assert_eq!(report.expired_assignments.len(), 1);
        assert_eq!(marked(&pim), postgres);
        // The connection's next writes wait for their flush again.
        if postgres {
            let tx = pim.conn().write().unwrap();
            let setting: String = tx
                .query_row("SHOW synchronous_commit", crate::params![], |r| r.get(0))
                .unwrap();
            assert_eq!(setting, "on");
        }
        assert!(pim.sweep("cron").unwrap().expired_assignments.is_empty());
        assert!(!marked(&pim));
    }

    /// More items than a transaction writes down, and more events than one multi-row
    /// statement holds: each is written down once, in order, and the log holds.
    #[test]
    fn a_sweep_of_many_items_writes_each_down_once_in_batches() {
        let (mut pim, clock, _) = pim();
        let mut ids = Vec::new();
        for u in 0..5 {
            let user = format!("u{u}");
            pim.add_user("admin", &user, None, None).unwrap();
            for s in 0..90 {
                ids.push(eligible_for_an_hour(&mut pim, &user, &format!("/s{s}")));
            }
        }
        let activation = pim
            .activate(
                "u0",
                ActivationInput {
                    role: "ticketed".into(),
                    scope: Some(Scope::parse("/s0").unwrap()),
                    duration: Some(Duration::minutes(30)),
                    justification: Some("INC-1".into()),
                    ticket: Some("T-2".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        clock.advance(Duration::hours(2));
        let report = pim.sweep("cron").unwrap();
        assert_eq!(report.expired_activations, vec![activation.id]);
        let mut expired = report.expired_assignments.clone();
        expired.sort_unstable();
        assert_eq!(expired, ids);
        assert_eq!(count_events(&pim, "assignment.expire"), 450);
        // Each event names its own assignment, in the order they were written down.
        let named: Vec<i64> = pim
            .conn()
            .query_map(
                "SELECT details FROM audit_events WHERE action = 'assignment.expire' ORDER BY seq",
                crate::params![],
                |r| r.get::<_, String>(0),
            )
            .unwrap()
            .map(|d| {
                serde_json::from_str::<serde_json::Value>(&d.unwrap()).unwrap()["assignment"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(named, report.expired_assignments);
        // Its batches were committed unflushed on PostgreSQL (`unflushed_writes`); its last
        // transaction flushed them all and took the marker that makes readers wait away.
        assert!(!marked(&pim));
        let again = pim.sweep("cron").unwrap();
        assert!(again.expired_assignments.is_empty() && again.expired_activations.is_empty());
        assert_eq!(count_events(&pim, "assignment.expire"), 450);
        let v = crate::audit::verify(pim.conn()).unwrap();
        assert!(v.ok, "{v:?}");
    }
}
