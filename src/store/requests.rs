//! Activation requests, their transitions, and approvers' decisions.
//!
//! A request moves only along the contract's transitions (`model::Status::may_become`):
//! every change of status names the statuses it may come from, so a final request never
//! changes, whatever a caller asks, and two writers can never both move one request.

use super::{Db, OptionalExtension, Row};
use crate::error::{Error, Result};
use crate::model::{Status, Verdict};
use crate::params;
use crate::time::{from_unix, rfc3339};
use serde::Serialize;

/// An activation request.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub id: i64,
    pub user: String,
    pub role: String,
    pub scope: String,
    /// The status as of now (an `active` request past its end reads `expired`).
    pub status: Status,
    pub start: String,
    pub end: String,
    pub justification: Option<String>,
    pub ticket: Option<String>,
    pub requested: String,
    pub closed_by: Option<String>,
    pub close_reason: Option<String>,
    /// A pending request times out at this instant.
    pub decide_by: Option<String>,
    /// For an extension: the activation it extends.
    pub extends: Option<i64>,
    /// Approvals and denials, oldest first (filled by `Pim::request`).
    pub decisions: Vec<Decision>,
    #[serde(skip)]
    pub start_at: i64,
    #[serde(skip)]
    pub end_at: i64,
    #[serde(skip)]
    pub duration_secs: i64,
    #[serde(skip)]
    pub decide_by_at: Option<i64>,
    /// The status as stored (time may have moved it on: see `status`).
    #[serde(skip)]
    pub stored: Status,
    /// When it was closed (decided against, withdrawn, ended early, timed out, expired).
    #[serde(skip)]
    pub closed_at: Option<i64>,
    /// When it was made (`requested`, as a number).
    #[serde(skip)]
    pub created_at: i64,
}

impl Request {
    /// When it ended, if it has: an activation's real end (its planned one when it ran its
    /// course), or when a request that never started was closed.
    pub fn ended_at(&self, now: i64) -> Option<i64> {
        match self.status {
            Status::Expired => Some(self.end_at.min(self.closed_at.unwrap_or(self.end_at))),
            Status::TimedOut => self.closed_at.or(self.decide_by_at),
            s if s.is_final() => self.closed_at.or(Some(now.min(self.end_at))),
            _ => None,
        }
    }
}

/// One approver's decision on a request.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub approver: String,
    pub decision: Verdict,
    pub justification: Option<String>,
    pub time: String,
}

/// A new request.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub user_id: i64,
    pub role: &'a str,
    pub scope: &'a str,
    pub eligibility_id: Option<i64>,
    pub status: Status,
    pub created_at: i64,
    pub start_at: i64,
    pub end_at: i64,
    pub justification: Option<&'a str>,
    pub ticket: Option<&'a str>,
    pub duration_secs: i64,
    pub decide_by: Option<i64>,
    /// For an extension: the activation it extends.
    pub extends: Option<i64>,
}

/// A request whose time has come (for the sweep): `at` is its end, or for a pending one
/// its deadline.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub user: String,
    pub role: String,
    pub scope: String,
    pub at: i64,
}

impl super::FromRow for Due {
    fn from_row(r: &Row<'_>) -> Result<Due> {
        Ok(Due {
            id: r.get(0)?,
            user: r.get(1)?,
            role: r.get(2)?,
            scope: r.get(3)?,
            at: r.get(4)?,
        })
    }
}

/// Whose requests.
#[derive(Debug, Clone, Copy)]
pub enum Of {
    Id(i64),
    User(i64),
    /// Those resting on an eligible assignment.
    Eligibility(i64),
    Everyone,
}

/// Which of them, as of `now`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Which {
    Any,
    /// Active or scheduled, not yet at their end.
    Running,
    /// Running and already started.
    Started,
    /// Running, or pending and not yet timed out.
    Open,
    /// Pending and not yet timed out, or scheduled and not yet started.
    Waiting,
    /// Pending and not yet timed out.
    Pending,
}

/// The status a stored status reads as at `now`: time moves requests on without a sweep.
pub fn effective_status(
    stored: Status,
    start: i64,
    end: i64,
    decide_by: Option<i64>,
    now: i64,
) -> Status {
    match stored {
        Status::Pending if decide_by.is_some_and(|d| d <= now) => Status::TimedOut,
        Status::Active | Status::Scheduled if end <= now => Status::Expired,
        Status::Active | Status::Scheduled if start <= now => Status::Active,
        Status::Active | Status::Scheduled => Status::Scheduled,
        other => other,
    }
}

const COLUMNS: &str = "r.id, u.name, r.role, r.scope, r.status, r.start_at, r.end_at, \
     r.justification, r.ticket, r.created_at, r.closed_by, r.close_reason, r.decide_by, \
     r.extends, r.duration_secs, r.closed_at";

fn from_row(r: &Row<'_>, now: i64) -> Result<Request> {
    let stored: Status = r.get(4)?;
    let start_at: i64 = r.get(5)?;
    let end_at: i64 = r.get(6)?;
    let decide_by: Option<i64> = r.get(12)?;
    let created_at: i64 = r.get(9)?;
    Ok(Request {
        id: r.get(0)?,
        user: r.get(1)?,
        role: r.get(2)?,
        scope: r.get(3)?,
        status: effective_status(stored, start_at, end_at, decide_by, now),
        start: rfc3339(from_unix(start_at)),
        end: rfc3339(from_unix(end_at)),
        justification: r.get(7)?,
        ticket: r.get(8)?,
        requested: rfc3339(from_unix(created_at)),
        closed_by: r.get(10)?,
        close_reason: r.get(11)?,
        decide_by: decide_by.map(|d| rfc3339(from_unix(d))),
        extends: r.get(13)?,
        decisions: Vec::new(),
        start_at,
        end_at,
        duration_secs: r.get::<_, Option<i64>>(14)?.unwrap_or(end_at - start_at),
        decide_by_at: decide_by,
        stored,
        closed_at: r.get(15)?,
        created_at,
    })
}

/// The statuses that may become `to`, as a SQL list.
fn sources(to: Status) -> String {
    Status::ALL
        .into_iter()
        .filter(|s| s.may_become(to))
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Db {
    /// Requests, oldest first.
    pub fn requests(&self, of: Of, which: Which, now: i64) -> Result<Vec<Request>> {
        let (who, value) = match of {
            Of::Id(id) => ("r.id = ?1", id),
            Of::User(id) => ("r.user_id = ?1", id),
            Of::Eligibility(id) => ("r.eligibility_id = ?1", id),
            Of::Everyone => ("?1 = 1", 1),
        };
        let running = "(r.status IN ('active', 'scheduled') AND r.end_at > ?2)";
        let pending = "(r.status = 'pending' AND r.decide_by > ?2)";
        let which = match which {
            Which::Any => "(r.start_at >= ?2 OR r.start_at < ?2)".to_string(),
            Which::Running => running.to_string(),
            Which::Started => format!("({running} AND r.start_at <= ?2)"),
            Which::Open => format!("({running} OR {pending})"),
            Which::Waiting => {
                format!("({pending} OR (r.status = 'scheduled' AND r.start_at > ?2))")
            }
            Which::Pending => pending.to_string(),
        };
        self.query_map(
            &format!(
                "SELECT {COLUMNS} FROM requests r JOIN users u ON u.id = r.user_id \
                 WHERE {who} AND {which} ORDER BY r.id"
            ),
            params![value, now],
            |r| from_row(r, now),
        )?
        .collect()
    }

    pub fn request_by_id(&self, id: i64, now: i64) -> Result<Option<Request>> {
        Ok(self.requests(Of::Id(id), Which::Any, now)?.pop())
    }

    /// Whether `user_id` has a request for `role` at `scope` waiting (pending or scheduled).
    pub fn has_waiting_request(
        &self,
        user_id: i64,
        role: &str,
        scope: &str,
        now: i64,
    ) -> Result<bool> {
        let n: i64 = self.query_row(
            "SELECT count(*) FROM requests WHERE user_id = ?1 AND role = ?2 AND scope = ?3 \
             AND ((status = 'pending' AND decide_by > ?4) OR (status = 'scheduled' AND end_at > ?4))",
            params![user_id, role, scope, now],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Whether an extension of activation `id` waits for approval.
    pub fn has_pending_extension(&self, id: i64, now: i64) -> Result<bool> {
        let n: i64 = self.query_row(
            "SELECT count(*) FROM requests WHERE extends = ?1 AND status = 'pending' AND decide_by > ?2",
            params![id, now],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// The eligible assignment a request rests on.
    pub fn request_eligibility(&self, id: i64) -> Result<Option<i64>> {
        Ok(self
            .query_row(
                "SELECT eligibility_id FROM requests WHERE id = ?1",
                params![id],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()?
            .flatten())
    }

    /// When the eligible assignment a request rests on ends (None: never, or none).
    pub fn request_eligibility_end(&self, id: i64) -> Result<Option<i64>> {
        Ok(self
            .query_row(
                "SELECT a.end_at FROM requests r JOIN assignments a ON a.id = r.eligibility_id WHERE r.id = ?1",
                params![id],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()?
            .flatten())
    }

    pub fn insert_request(&self, r: &NewRequest<'_>) -> Result<i64> {
        self.insert(
            "INSERT INTO requests (user_id, role, scope, eligibility_id, status, created_at, start_at, end_at, \
             justification, ticket, duration_secs, decide_by, extends) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                r.user_id,
                r.role,
                r.scope,
                r.eligibility_id,
                r.status,
                r.created_at,
                r.start_at,
                r.end_at,
                r.justification,
                r.ticket,
                r.duration_secs,
                r.decide_by,
                r.extends
            ],
        )
    }

    /// Move request `id` to `to`, setting `set` (more `column = ?n` assignments, `?3`
    /// onwards bound to `more`), only from a status that may become `to`.
    fn transition(
        &self,
        id: i64,
        to: Status,
        set: &str,
        more: &[&dyn super::ToValue],
    ) -> Result<()> {
        let from = sources(to);
        if from.is_empty() {
            return Err(Error::Conflict(format!(
                "No request ever becomes {to} again; see `pim request show {id}`."
            )));
        }
        let mut values: Vec<&dyn super::ToValue> = vec![&to, &id];
        values.extend_from_slice(more);
        let comma = if set.is_empty() { "" } else { ", " };
        let changed = self.execute(
            &format!(
                "UPDATE requests SET status = ?1{comma}{set} WHERE id = ?2 AND status IN ({from})"
            ),
            &values,
        )?;
        if changed == 0 {
            return Err(Error::Conflict(format!(
                "Request {id} can no longer become {to}; see `pim request show {id}`."
            )));
        }
        Ok(())
    }

    /// End a request early (deactivated, revoked, denied, canceled), by `by`.
    pub fn close_request(
        &self,
        id: i64,
        to: Status,
        at: i64,
        by: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        self.transition(
            id,
            to,
            "closed_at = ?3, closed_by = ?4, close_reason = ?5",
            params![at, by, reason],
        )
    }

    /// Start an approved request: active (or scheduled) from `start` to `end`.
    pub fn start_request(&self, id: i64, to: Status, start: i64, end: i64) -> Result<()> {
        self.transition(id, to, "start_at = ?3, end_at = ?4", params![start, end])
    }

    /// A scheduled activation whose start has come.
    pub fn request_started(&self, id: i64) -> Result<()> {
        self.transition(id, Status::Active, "", params![])
    }

    /// An activation that ran to its end.
    pub fn request_expired(&self, id: i64) -> Result<()> {
        self.transition(
            id,
            Status::Expired,
            "closed_at = end_at, close_reason = 'expired'",
            params![],
        )
    }

    /// A pending request nobody decided in time.
    pub fn request_timed_out(&self, id: i64) -> Result<()> {
        self.transition(
            id,
            Status::TimedOut,
            "closed_at = decide_by, close_reason = 'no decision in time'",
            params![],
        )
    }

    /// An approved extension: it closes, its time given to the activation it extends.
    pub fn extension_applied(&self, id: i64, at: i64) -> Result<()> {
        self.transition(
            id,
            Status::Expired,
            "start_at = ?3, end_at = ?3, closed_at = ?3, close_reason = 'extension applied'",
            params![at],
        )
    }

    /// Move the end of a running activation (an extension, or a shortened eligibility).
    pub fn set_request_end(&self, id: i64, end: i64) -> Result<()> {
        let changed = self.execute(
            "UPDATE requests SET end_at = ?1 WHERE id = ?2 AND status IN ('active', 'scheduled')",
            params![end, id],
        )?;
        if changed == 0 {
            return Err(Error::Conflict(format!(
                "Activation {id} is no longer running."
            )));
        }
        Ok(())
    }

    /// Scheduled activations whose start has come and running ones whose end has: what a
    /// sweep records (`at`: the end).
    pub fn requests_due(&self, now: i64, limit: i64) -> Result<Vec<Due>> {
        self.query_map(
            "SELECT r.id, u.name, r.role, r.scope, r.end_at FROM requests r \
             JOIN users u ON u.id = r.user_id \
             WHERE (r.status = 'scheduled' AND r.start_at <= ?1) OR (r.status = 'active' AND r.end_at <= ?1) \
             ORDER BY r.id LIMIT ?2",
            params![now, limit],
            super::FromRow::from_row,
        )?
        .collect()
    }

    /// Pending requests past their deadline (`at`: the deadline).
    pub fn requests_timed_out(&self, now: i64, limit: i64) -> Result<Vec<Due>> {
        self.query_map(
            "SELECT r.id, u.name, r.role, r.scope, r.decide_by FROM requests r JOIN users u ON u.id = r.user_id \
             WHERE r.status = 'pending' AND r.decide_by <= ?1 ORDER BY r.id LIMIT ?2",
            params![now, limit],
            super::FromRow::from_row,
        )?
        .collect()
    }

    /// The decisions on a request, oldest first.
    pub fn decisions(&self, request: i64) -> Result<Vec<Decision>> {
        self.query_map(
            "SELECT approver, decision, justification, at FROM decisions WHERE request_id = ?1 ORDER BY id",
            params![request],
            |r| {
                Ok(Decision {
                    approver: r.get(0)?,
                    decision: r.get(1)?,
                    justification: r.get(2)?,
                    time: rfc3339(from_unix(r.get(3)?)),
                })
            },
        )?
        .collect()
    }

    pub fn has_decided(&self, request: i64, approver: &str) -> Result<bool> {
        let n: i64 = self.query_row(
            "SELECT count(*) FROM decisions WHERE request_id = ?1 AND approver = ?2",
            params![request, approver],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// The approved activations that have not started yet (stored `scheduled`, starting
    /// after `now`) that `approver` approved.
    pub fn scheduled_approved_by(&self, approver: &str, now: i64) -> Result<Vec<i64>> {
        self.query_map(
            "SELECT r.id FROM requests r JOIN decisions d ON d.request_id = r.id \
             WHERE r.status = 'scheduled' AND r.start_at > ?2 AND d.approver = ?1 \
             AND d.decision = 'approve' ORDER BY r.id",
            params![approver, now],
            |r| r.get(0),
        )?
        .collect()
    }

    /// The pending requests `approver` has decided (one read for a list of them).
    pub fn pending_decided_by(&self, approver: &str) -> Result<std::collections::HashSet<i64>> {
        self.query_map(
            "SELECT d.request_id FROM requests r JOIN decisions d ON d.request_id = r.id \
             WHERE r.status = 'pending' AND d.approver = ?1",
            params![approver],
            |r| r.get(0),
        )?
        .collect()
    }

    pub fn insert_decision(
        &self,
        request: i64,
        approver: &str,
        verdict: Verdict,
        justification: Option<&str>,
        at: i64,
    ) -> Result<()> {
        self.execute(
            "INSERT INTO decisions (request_id, approver, decision, justification, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![request, approver, verdict, justification, at],
        )?;
        Ok(())
    }
}
