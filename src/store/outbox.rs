//! The notification outbox: written in the event's transaction, delivered after it.

use super::{Db, OptionalExtension, Row};
use crate::error::Result;
use crate::params;
use crate::time::{from_unix, rfc3339};
use serde::Serialize;

/// An outbox row.
#[derive(Debug, Clone, Serialize)]
pub struct Outgoing {
    pub id: i64,
    pub event: String,
    pub channel: String,
    pub recipients: Vec<String>,
    pub status: String,
    pub attempts: i64,
    pub next_attempt: Option<String>,
    pub last_error: Option<String>,
    pub created: String,
    pub sent: Option<String>,
    #[serde(skip)]
    pub payload: String,
}

/// An outbox row claimed for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub id: i64,
    /// The tries before this one, read by the claim itself (not from an earlier list).
    pub attempts: i64,
    /// When the claim runs out: a later claim by another process has a later one, so it
    /// also tells whether this one still holds.
    until: i64,
}

const COLUMNS: &str = "id, event, channel, recipients, status, attempts, next_attempt_at, \
     last_error, created_at, sent_at, payload";

fn from_row(r: &Row<'_>) -> Result<Outgoing> {
    let status: String = r.get(4)?;
    Ok(Outgoing {
        id: r.get(0)?,
        event: r.get(1)?,
        channel: r.get(2)?,
        recipients: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
        next_attempt: (status == "pending")
            .then(|| r.get::<_, i64>(6).map(|t| rfc3339(from_unix(t))))
            .transpose()?,
        status,
        attempts: r.get(5)?,
        last_error: r.get(7)?,
        created: rfc3339(from_unix(r.get(8)?)),
        sent: r.get::<_, Option<i64>>(9)?.map(|t| rfc3339(from_unix(t))),
        payload: r.get(10)?,
    })
}

impl Db {
    /// The last outbox row (0 when there is none).
    pub fn outbox_end(&self) -> Result<i64> {
        self.query_row("SELECT coalesce(max(id), 0) FROM outbox", params![], |r| {
            r.get(0)
        })
    }

    pub fn insert_outgoing(
        &self,
        event: &str,
        channel: &str,
        recipients: &[String],
        payload: &str,
        at: i64,
    ) -> Result<i64> {
        self.insert(
            "INSERT INTO outbox (event, channel, recipients, payload, next_attempt_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![
                event,
                channel,
                serde_json::to_string(recipients).unwrap_or_default(),
                payload,
                at
            ],
        )
    }

    /// Keep only the first `keep` rows queued after `mark` (ids need not be consecutive:
    /// a server's sequences leave gaps).
    pub fn trim_outbox(&self, mark: i64, keep: i64) -> Result<()> {
        self.execute(
            "DELETE FROM outbox WHERE id > ?1 AND id NOT IN \
             (SELECT id FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2)",
            params![mark, keep],
        )?;
        Ok(())
    }

    /// The outbox, or only what was given up.
    pub fn outbox(&self, failed_only: bool) -> Result<Vec<Outgoing>> {
        self.query_map(
            &format!("SELECT {COLUMNS} FROM outbox WHERE ?1 = 0 OR status = 'failed' ORDER BY id"),
            params![failed_only],
            from_row,
        )?
        .collect()
    }

    /// Rows waiting whose time has come.
    pub fn outbox_due(&self, now: i64) -> Result<Vec<Outgoing>> {
        self.query_map(
            &format!(
                "SELECT {COLUMNS} FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?1 ORDER BY id"
            ),
            params![now],
            from_row,
        )?
        .collect()
    }

    /// Claim a row for a delivery at `now`, if it is still due then: nobody else tries it
    /// before `until`. `None` when another process claimed or sent it first.
    pub fn claim_outgoing(&self, id: i64, now: i64, until: i64) -> Result<Option<Claim>> {
        self.query_row(
            "UPDATE outbox SET next_attempt_at = ?1 WHERE id = ?2 AND status = 'pending' \
             AND next_attempt_at <= ?3 RETURNING attempts",
            params![until, id, now],
            |r| r.get(0),
        )
        .optional()
        .map(|attempts| {
            attempts.map(|attempts| Claim {
                id,
                attempts,
                until,
            })
        })
    }

    /// The claimed row was sent. False when the claim had run out and another process has
    /// claimed the row since (it is then that process's to record).
    pub fn outgoing_sent(&self, claim: &Claim, at: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE outbox SET status = 'sent', attempts = ?1, sent_at = ?2, last_error = NULL \
             WHERE id = ?3 AND status = 'pending' AND next_attempt_at = ?4",
            params![claim.attempts + 1, at, claim.id, claim.until],
        )? == 1)
    }

    /// The claimed row's try failed for the last time (see `outgoing_sent` for false).
    pub fn outgoing_failed(&self, claim: &Claim, why: &str) -> Result<bool> {
        Ok(self.execute(
            "UPDATE outbox SET status = 'failed', attempts = ?1, last_error = ?2 \
             WHERE id = ?3 AND status = 'pending' AND next_attempt_at = ?4",
            params![claim.attempts + 1, why, claim.id, claim.until],
        )? == 1)
    }

    /// The claimed row's try failed: try again at `at` (see `outgoing_sent` for false).
    pub fn outgoing_retry(&self, claim: &Claim, why: &str, at: i64) -> Result<bool> {
        Ok(self.execute(
            "UPDATE outbox SET attempts = ?1, last_error = ?2, next_attempt_at = ?3 \
             WHERE id = ?4 AND status = 'pending' AND next_attempt_at = ?5",
            params![claim.attempts + 1, why, at, claim.id, claim.until],
        )? == 1)
    }

    /// A user's e-mail address, if they have one.
    pub fn email_of(&self, name: &str) -> Result<Option<String>> {
        Ok(self.find_user(name)?.and_then(|u| u.email))
    }

    /// Enabled people, by name (who might approve).
    pub fn enabled_people(&self) -> Result<Vec<String>> {
        self.query_map(
            "SELECT name FROM users WHERE disabled = 0 AND kind = 'user' ORDER BY name",
            params![],
            |r| r.get(0),
        )?
        .collect()
    }

    /// Eligible assignments of `user_id` for `role` in effect at `at`: (id, scope, end),
    /// the one lasting longest first.
    pub fn eligibilities(
        &self,
        user_id: i64,
        role: &str,
        at: i64,
    ) -> Result<Vec<(i64, String, Option<i64>)>> {
        self.query_map(
            "SELECT id, scope, end_at FROM assignments WHERE user_id = ?1 AND role = ?2 \
             AND kind = 'eligible' AND removed_at IS NULL AND start_at <= ?3 \
             AND (end_at IS NULL OR end_at > ?3) ORDER BY end_at IS NULL DESC, end_at DESC",
            params![user_id, role, at],
            super::FromRow::from_row,
        )?
        .collect()
    }
}
