//! `pim sweep`: record in the audit log what time has already decided (starts and
//! expirations). Decisions never wait for it; it only writes them down, once.

use super::Pim;
use crate::audit::{self, Event};
use crate::error::Result;
use crate::time::{from_unix, rfc3339};
use rusqlite::params;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    pub started: Vec<i64>,
    pub expired_activations: Vec<i64>,
    pub expired_assignments: Vec<i64>,
    pub timed_out: Vec<i64>,
}

impl Pim {
    pub fn sweep(&mut self, actor: &str) -> Result<SweepReport> {
        self.write(|tx, now, _| {
            let t = now.timestamp();
            let mut report = SweepReport::default();
            type Row = (i64, String, String, String, i64, i64);
            let due: Vec<Row> = {
                let mut stmt = tx.prepare(
                    "SELECT r.id, u.name, r.role, r.scope, r.start_at, r.end_at FROM requests r \
                     JOIN users u ON u.id = r.user_id \
                     WHERE (r.status = 'scheduled' AND r.start_at <= ?1) OR (r.status = 'active' AND r.end_at <= ?1) \
                     ORDER BY r.id",
                )?;
                let rows = stmt.query_map([t], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
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
                    tx.execute("UPDATE requests SET status = 'active' WHERE id = ?1", [id])?;
                    audit::append(tx, now, event("activation.start"))?;
                    report.started.push(id);
                } else {
                    tx.execute(
                        "UPDATE requests SET status = 'expired', closed_at = end_at, close_reason = 'expired' WHERE id = ?1",
                        [id],
                    )?;
                    audit::append(tx, now, event("activation.expire").detail("ended_at", rfc3339(from_unix(end))))?;
                    report.expired_activations.push(id);
                }
            }
            let stale: Vec<(i64, String, String, String, i64)> = {
                let mut stmt = tx.prepare(
                    "SELECT r.id, u.name, r.role, r.scope, r.decide_by FROM requests r JOIN users u ON u.id = r.user_id \
                     WHERE r.status = 'pending' AND r.decide_by <= ?1 ORDER BY r.id",
                )?;
                let rows = stmt.query_map([t], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for (id, user, role, scope, deadline) in stale {
                tx.execute(
                    "UPDATE requests SET status = 'timed_out', closed_at = decide_by, close_reason = 'no decision in time' WHERE id = ?1",
                    [id],
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
                report.timed_out.push(id);
            }
            let ended: Vec<(i64, String, String, String, String, i64)> = {
                let mut stmt = tx.prepare(
                    "SELECT a.id, u.name, a.role, a.scope, a.kind, a.end_at FROM assignments a \
                     JOIN users u ON u.id = a.user_id \
                     WHERE a.removed_at IS NULL AND a.expiry_recorded = 0 AND a.end_at <= ?1 ORDER BY a.id",
                )?;
                let rows = stmt.query_map([t], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
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
            Ok(report)
        })
    }
}
