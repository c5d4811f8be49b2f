//! `pim sweep`: record in the audit log what time has already decided (starts and
//! expirations). Decisions never wait for it; it only writes them down, once.

use super::Pim;
use crate::audit::Event;
use crate::error::Result;
use crate::store::requests::Due;
use crate::time::{from_unix, rfc3339};
use serde::Serialize;

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

impl Pim {
    pub fn sweep(&mut self, actor: &str) -> Result<SweepReport> {
        self.write_system(|tx, now, policy| {
            let t = now.timestamp();
            let mut report = SweepReport::default();
            for Due {
                id,
                user,
                role,
                scope,
                at: end,
            } in tx.requests_due(t)?
            {
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
                    tx.record(event("activation.start"))?;
                    report.started.push(id);
                } else {
                    tx.request_expired(id)?;
                    tx.record(
                        event("activation.expire").detail("ended_at", rfc3339(from_unix(end))),
                    )?;
                    report.expired_activations.push(id);
                }
            }
            for Due {
                id,
                user,
                role,
                scope,
                at: deadline,
            } in tx.requests_timed_out(t)?
            {
                tx.request_timed_out(id)?;
                tx.record(
                    Event::new(actor, "activation.timeout")
                        .principal(&user)
                        .role(&role)
                        .scope(&scope)
                        .request(id)
                        .detail("decide_by", rfc3339(from_unix(deadline))),
                )?;
                report.timed_out.push(id);
            }
            for a in tx.ended_unrecorded(t)? {
                let (id, user, role, scope, kind) = (a.id, a.user, a.role, a.scope, a.kind);
                let end = a.end_at.unwrap_or(t);
                tx.expiry_recorded(id)?;
                tx.record(
                    Event::new(actor, "assignment.expire")
                        .principal(&user)
                        .role(&role)
                        .scope(&scope)
                        .expires(Some(end))
                        .detail("type", kind)
                        .detail("assignment", id)
                        .detail("ended_at", rfc3339(from_unix(end))),
                )?;
                report.expired_assignments.push(id);
            }
            // Reminders 14 days and 1 day before an assignment ends, each sent once.
            for (kind, days, lower) in [("1d", 1, 0), ("14d", 14, 86_400)] {
                for a in tx.ending_unreminded(t + lower, t + days * 86_400, kind)? {
                    let id = a.id;
                    let end = a.end_at.unwrap_or(t);
                    tx.insert_reminder(id, kind)?;
                    tx.record(
                        Event::new(actor, "assignment.remind")
                            .principal(&a.user)
                            .role(&a.role)
                            .scope(&a.scope)
                            .expires(Some(end))
                            .detail("type", a.kind)
                            .detail("assignment", id)
                            .detail("reminder", kind),
                    )?;
                    if !report.reminded.contains(&id) {
                        report.reminded.push(id);
                    }
                }
            }
            let (completed, started) = super::reviews::sweep_reviews(tx, policy, now, actor)?;
            report.reviews_completed = completed;
            report.reviews_started = started;
            // For `pim doctor`: a sweep that ran, wherever it runs (a timer here, a job
            // on another host of a shared server).
            tx.set_last_sweep(t)?;
            Ok(report)
        })
    }
}
