//! Access reviews and their items.

use super::{Db, OptionalExtension, Row, ToValue};
use crate::error::Result;
use crate::model::Kind;
use crate::params;
use crate::time::{from_unix, rfc3339};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize)]
pub struct Review {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub scope: String,
    pub reviewers: Vec<String>,
    pub self_review: bool,
    pub default: String,
    pub every: Option<String>,
    pub created_by: String,
    pub start: String,
    pub end: String,
    /// `open`, `due` (its time is up, not yet completed) or `completed`.
    pub state: String,
    /// When it was completed (which may be before its end).
    pub completed: Option<String>,
    pub decided: i64,
    pub total: i64,
    pub items: Vec<ReviewItem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReviewItem {
    pub user: String,
    pub role: String,
    pub scope: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub recommendation: String,
    pub reason: String,
    pub decision: Option<String>,
    pub reviewer: Option<String>,
    pub justification: Option<String>,
    pub decided_at: Option<String>,
    pub applied: Option<String>,
    pub result: Option<String>,
}

/// A review's items counted: all of them, and those decided.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counted {
    pub total: i64,
    pub decided: i64,
}

const REVIEW_COLUMNS: &str = "id, name, role, scope, reviewers, self_review, default_decision, \
     recurrence, created_by, created_at, ends_at, completed_at";

/// A review from the `REVIEW_COLUMNS` of its row, without its items.
fn review_from_row(r: &Row<'_>, now: i64) -> Result<Review> {
    let ends: i64 = r.get(10)?;
    let completed: Option<i64> = r.get(11)?;
    Ok(Review {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        scope: r.get(3)?,
        reviewers: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        self_review: r.get(5)?,
        default: r.get(6)?,
        every: r.get(7)?,
        created_by: r.get(8)?,
        start: rfc3339(from_unix(r.get(9)?)),
        end: rfc3339(from_unix(ends)),
        state: if completed.is_some() {
            "completed"
        } else if ends <= now {
            "due"
        } else {
            "open"
        }
        .to_string(),
        completed: completed.map(|c| rfc3339(from_unix(c))),
        decided: 0,
        total: 0,
        items: Vec::new(),
    })
}

/// A review item to store (`insert_review_items`).
#[derive(Debug, Clone)]
pub struct NewItem {
    pub assignment: i64,
    pub user: String,
    pub scope: String,
    pub kind: Kind,
    pub recommendation: String,
    pub reason: String,
}

/// What a review's recommendation needs to know of a user (`review_facts`).
#[derive(Debug, Clone, Copy, Default)]
pub struct UserFacts {
    pub disabled: bool,
    pub last_activation: Option<i64>,
}

/// A new review.
#[derive(Debug, Clone)]
pub struct NewReview<'a> {
    pub name: &'a str,
    pub role: &'a str,
    pub scope: &'a str,
    pub self_review: bool,
    pub reviewers: &'a [String],
    pub default: &'a str,
    pub every: Option<&'a str>,
    pub duration_secs: i64,
    pub created_by: &'a str,
    pub created_at: i64,
}

/// An item as a review's completion sees it.
#[derive(Debug, Clone)]
pub struct Pending {
    pub item: i64,
    pub assignment: i64,
    pub user: String,
    pub kind: Kind,
    pub recommendation: String,
    pub decision: Option<String>,
}

/// A recurring review whose next one has not started yet.
#[derive(Debug, Clone)]
pub struct Recurring {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub scope: String,
    pub reviewers: Vec<String>,
    pub self_review: bool,
    pub default: String,
    pub duration_secs: i64,
    pub every: String,
    pub created_at: i64,
}

impl Db {
    /// A review with its items, as of `now`.
    pub fn review(&self, id: i64, now: i64) -> Result<Option<Review>> {
        let Some(mut review) = self
            .query_row(
                &format!("SELECT {REVIEW_COLUMNS} FROM reviews WHERE id = ?1"),
                params![id],
                |r| review_from_row(r, now),
            )
            .optional()?
        else {
            return Ok(None);
        };
        review.items = self
            .query_map(
                "SELECT \"user\", role, scope, kind, recommendation, reason, decision, reviewer, justification, \
                 decided_at, applied, result \
                 FROM review_items WHERE review_id = ?1 ORDER BY \"user\", scope, kind",
                params![id],
                |r| {
                    Ok(ReviewItem {
                        user: r.get(0)?,
                        role: r.get(1)?,
                        scope: r.get(2)?,
                        kind: r.get(3)?,
                        recommendation: r.get(4)?,
                        reason: r.get(5)?,
                        decision: r.get(6)?,
                        reviewer: r.get(7)?,
                        justification: r.get(8)?,
                        decided_at: r.get::<_, Option<i64>>(9)?.map(|t| rfc3339(from_unix(t))),
                        applied: r.get(10)?,
                        result: r.get(11)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>>>()?;
        review.total = review.items.len() as i64;
        review.decided = review.items.iter().filter(|i| i.decision.is_some()).count() as i64;
        Ok(Some(review))
    }

    /// Every review, oldest first, without its items: how many it has and how many are
    /// decided, in all and of `user`'s own (what a self-reviewer sees). One statement for the
    /// list, the counts through the items' key by review.
    pub fn review_summaries(&self, user: &str, now: i64) -> Result<Vec<(Review, Counted)>> {
        let count = |filter: &str| {
            format!("(SELECT count(*) FROM review_items i WHERE i.review_id = reviews.id{filter})")
        };
        self.query_map(
            &format!(
                "SELECT {REVIEW_COLUMNS}, {}, {}, {}, {} FROM reviews ORDER BY id",
                count(""),
                count(" AND i.decision IS NOT NULL"),
                count(" AND i.\"user\" = ?1"),
                count(" AND i.\"user\" = ?1 AND i.decision IS NOT NULL"),
            ),
            params![user],
            |r| {
                let mut review = review_from_row(r, now)?;
                review.total = r.get(12)?;
                review.decided = r.get(13)?;
                let own = Counted {
                    total: r.get(14)?,
                    decided: r.get(15)?,
                };
                Ok((review, own))
            },
        )?
        .collect()
    }

    pub fn review_ids(&self) -> Result<Vec<i64>> {
        self.query_map("SELECT id FROM reviews ORDER BY id", params![], |r| {
            r.get(0)
        })?
        .collect()
    }

    pub fn insert_review(&self, r: &NewReview<'_>) -> Result<i64> {
        self.insert(
            "INSERT INTO reviews (name, role, scope, self_review, reviewers, default_decision, recurrence, duration_secs, \
             created_by, created_at, ends_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                r.name,
                r.role,
                r.scope,
                r.self_review,
                serde_json::to_string(r.reviewers).unwrap_or_default(),
                r.default,
                r.every,
                r.duration_secs,
                r.created_by,
                r.created_at,
                r.created_at + r.duration_secs
            ],
        )
    }

    /// Store a new review's items for `role`, in multi-row statements.
    pub fn insert_review_items(&self, review: i64, role: &str, items: &[NewItem]) -> Result<()> {
        for chunk in items.chunks(super::ROWS_PER_INSERT) {
            let values: Vec<&dyn ToValue> = chunk
                .iter()
                .flat_map(|i| {
                    [
                        &review as &dyn ToValue,
                        &i.assignment,
                        &i.user,
                        &role,
                        &i.scope,
                        &i.kind,
                        &i.recommendation,
                        &i.reason,
                    ]
                })
                .collect();
            self.execute(
                &super::values_rows(
                    "INSERT INTO review_items (review_id, assignment_id, \"user\", role, scope, kind, \
                     recommendation, reason)",
                    8,
                    chunk.len(),
                ),
                &values,
            )?;
        }
        Ok(())
    }

    /// The items of a review, for applying it.
    pub fn review_items_pending(&self, review: i64) -> Result<Vec<Pending>> {
        self.query_map(
            "SELECT i.id, i.assignment_id, i.\"user\", i.kind, i.recommendation, i.decision FROM review_items i \
             WHERE i.review_id = ?1 ORDER BY i.id",
            params![review],
            |r| {
                Ok(Pending {
                    item: r.get(0)?,
                    assignment: r.get(1)?,
                    user: r.get(2)?,
                    kind: r.get(3)?,
                    recommendation: r.get(4)?,
                    decision: r.get(5)?,
                })
            },
        )?
        .collect()
    }

    /// Record a reviewer's decision on every item of `user` in a review; how many.
    pub fn decide_review_items(
        &self,
        review: i64,
        user: &str,
        decision: &str,
        reviewer: &str,
        justification: &str,
        at: i64,
    ) -> Result<usize> {
        self.execute(
            "UPDATE review_items SET decision = ?1, reviewer = ?2, justification = ?3, decided_at = ?4 \
             WHERE review_id = ?5 AND \"user\" = ?6",
            params![decision, reviewer, justification, at, review, user],
        )
    }

    pub fn review_item_applied(&self, item: i64, applied: &str, result: &str) -> Result<()> {
        self.execute(
            "UPDATE review_items SET applied = ?1, result = ?2 WHERE id = ?3",
            params![applied, result, item],
        )?;
        Ok(())
    }

    pub fn review_completed(&self, id: i64, at: i64, by: &str) -> Result<()> {
        self.execute(
            "UPDATE reviews SET completed_at = ?1, completed_by = ?2 WHERE id = ?3",
            params![at, by, id],
        )?;
        Ok(())
    }

    /// Reviews whose time is up and that are not completed.
    pub fn reviews_due(&self, now: i64) -> Result<Vec<i64>> {
        self.query_map(
            "SELECT id FROM reviews WHERE completed_at IS NULL AND ends_at <= ?1 ORDER BY ends_at, id",
            params![now],
            |r| r.get(0),
        )?
        .collect()
    }

    pub fn reviews_recurring(&self) -> Result<Vec<Recurring>> {
        self.query_map(
            "SELECT id, name, role, scope, reviewers, self_review, default_decision, duration_secs, recurrence, created_at \
             FROM reviews WHERE recurrence IS NOT NULL AND next_started = 0 ORDER BY id",
            params![],
            |r| {
                Ok(Recurring {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    role: r.get(2)?,
                    scope: r.get(3)?,
                    reviewers: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                    self_review: r.get(5)?,
                    default: r.get(6)?,
                    duration_secs: r.get(7)?,
                    every: r.get(8)?,
                    created_at: r.get(9)?,
                })
            },
        )?
        .collect()
    }

    pub fn review_next_started(&self, id: i64) -> Result<()> {
        self.execute(
            "UPDATE reviews SET next_started = 1 WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// When `user_id` last started an activation of `role` (for a review's recommendation).
    /// For each user holding `role` at `now` (`user_id` -> facts): whether they are disabled
    /// and when they last activated it, by `now`. One statement for a whole review, each
    /// user's activations found through their key by user.
    pub fn review_facts(&self, role: &str, now: i64) -> Result<HashMap<i64, UserFacts>> {
        self.query_map(
            "SELECT u.id, u.disabled, (SELECT max(r.start_at) FROM requests r WHERE r.user_id = u.id \
             AND r.role = ?1 AND r.status IN ('active', 'expired', 'deactivated', 'revoked') \
             AND r.start_at <= ?2) FROM users u WHERE u.id IN (SELECT a.user_id FROM assignments a \
             WHERE a.role = ?1 AND a.removed_at IS NULL AND (a.end_at IS NULL OR a.end_at > ?2))",
            params![role, now],
            |r| {
                Ok((
                    r.get(0)?,
                    UserFacts {
                        disabled: r.get(1)?,
                        last_activation: r.get(2)?,
                    },
                ))
            },
        )?
        .collect()
    }
}
