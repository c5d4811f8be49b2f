//! `pim sweep`: record in the audit log what time has already decided (starts and
//! expirations). Decisions never wait for it; it only writes them down, once.

use super::Pim;
use crate::audit::{self, Event};
use crate::error::Result;
use crate::params;
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
            type Row = (i64, String, String, String, i64, i64);
            let due: Vec<Row> = super::rows(tx, "SELECT r.id, u.name, r.role, r.scope, r.start_at, r.end_at FROM requests r \
                     JOIN users u ON u.id = r.user_id \
                     WHERE (r.status = 'scheduled' AND r.start_at <= ?1) OR (r.status = 'active' AND r.end_at <= ?1) \
                     ORDER BY r.id", params![t])?;
            for (id, user, role, scope, _start, end) in due {
                let event = |action: &str| {
                    Event::new(actor, action)
                        .principal(&user)
                        .role(&role)
                        .scope(&scope)
                        .request(id)
                        .expires(Some(end))
                };
                if end > t {
                    tx.execute("UPDATE requests SET status = 'active' WHERE id = ?1", params![id])?;
                    audit::append(tx, now, event("activation.start"))?;
                    super::notices::started(tx, policy, now, &user, &role, &scope, id, end)?;
                    report.started.push(id);
                } else {
                    tx.execute(
                        "UPDATE requests SET status = 'expired', closed_at = end_at, close_reason = 'expired' WHERE id = ?1",
                        params![id],
                    )?;
                    audit::append(tx, now, event("activation.expire").detail("ended_at", rfc3339(from_unix(end))))?;
                    report.expired_activations.push(id);
                }
            }
            let stale: Vec<(i64, String, String, String, i64)> = super::rows(tx, "SELECT r.id, u.name, r.role, r.scope, r.decide_by FROM requests r JOIN users u ON u.id = r.user_id \
                     WHERE r.status = 'pending' AND r.decide_by <= ?1 ORDER BY r.id", params![t])?;
            for (id, user, role, scope, deadline) in stale {
                tx.execute(
                    "UPDATE requests SET status = 'timed_out', closed_at = decide_by, close_reason = 'no decision in time' WHERE id = ?1",
                    params![id],
                )?;
                audit::append(
                    tx,
                    now,
                    Event::new(actor, "activation.timeout")
                        .principal(&user)
                        .role(&role)
                        .scope(&scope)
                        .request(id)
                        .detail("decide_by", rfc3339(from_unix(deadline))),
                )?;
                super::notices::decided(tx, policy, now, "activation.timeout", &user, &role, &scope, id, actor, None)?;
                report.timed_out.push(id);
            }
            let ended: Vec<(i64, String, String, String, String, i64)> = super::rows(tx, "SELECT a.id, u.name, a.role, a.scope, a.kind, a.end_at FROM assignments a \
                     JOIN users u ON u.id = a.user_id \
                     WHERE a.removed_at IS NULL AND a.expiry_recorded = 0 AND a.end_at <= ?1 ORDER BY a.id", params![t])?;
            for (id, user, role, scope, kind, end) in ended {
                tx.execute(
                    "UPDATE assignments SET expiry_recorded = 1 WHERE id = ?1",
                    params![id],
                )?;
                audit::append(
                    tx,
                    now,
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
                let soon: Vec<(i64, String, String, String, String, i64)> = super::rows(tx, "SELECT a.id, u.name, a.role, a.scope, a.kind, a.end_at FROM assignments a \
                         JOIN users u ON u.id = a.user_id \
                         WHERE a.removed_at IS NULL AND a.end_at > ?1 AND a.end_at <= ?2 \
                           AND NOT EXISTS (SELECT 1 FROM reminders r WHERE r.assignment_id = a.id AND r.kind = ?3) \
                         ORDER BY a.id", params![t + lower, t + days * 86_400, kind])?;
                for (id, user, role, scope, akind, end) in soon {
                    tx.execute(
                        "INSERT INTO reminders (assignment_id, kind) VALUES (?1, ?2)",
                        params![id, kind],
                    )?;
                    super::notices::expiring(tx, policy, now, &user, &role, &scope, &akind, end)?;
                    if !report.reminded.contains(&id) {
                        report.reminded.push(id);
                    }
                }
            }
            let (completed, started) = super::reviews::sweep_reviews(tx, policy, now, actor)?;
            report.reviews_completed = completed;
            report.reviews_started = started;
            Ok(report)
        })
    }
}
