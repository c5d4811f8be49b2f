//! Eligible and active assignments, what a user holds right now, and the reminders sent
//! before an assignment ends.

use super::{Db, FromRow, OptionalExtension, Row, ToValue};
use crate::error::Result;
use crate::model::{Kind, Status};
use crate::params;
use crate::time::{from_unix, rfc3339};
use serde::Serialize;
use std::collections::HashMap;

/// An assignment, or (in listings) an activation shown as an active assignment.
#[derive(Debug, Clone, Serialize)]
pub struct Assignment {
    pub id: i64,
    pub user: String,
    pub role: String,
    pub scope: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub start: String,
    pub end: Option<String>,
    /// `assignment` (made by an administrator) or `activation` (taken by the user).
    pub source: String,
    /// The activation request, for an activation.
    pub request: Option<i64>,
    pub justification: Option<String>,
    pub ticket: Option<String>,
    pub created_by: String,
    /// `in effect`, `scheduled`, `ended` or `removed`.
    pub state: String,
    #[serde(skip)]
    pub start_at: i64,
    #[serde(skip)]
    pub end_at: Option<i64>,
}

/// A new assignment.
#[derive(Debug, Clone)]
pub struct NewAssignment<'a> {
    pub user_id: i64,
    pub role: &'a str,
    pub scope: &'a str,
    pub kind: Kind,
    pub start_at: i64,
    pub end_at: Option<i64>,
    pub justification: Option<&'a str>,
    pub ticket: Option<&'a str>,
    pub created_by: &'a str,
    pub created_at: i64,
}

/// A role held at an instant: through a direct active assignment or an activation.
#[derive(Debug, Clone)]
pub struct Held {
    pub role: String,
    pub scope: String,
    /// None: permanent.
    pub until: Option<i64>,
    pub assignment: Option<i64>,
    pub request: Option<i64>,
}

/// An assignment in effect, with its holder (for bulk changes, reviews and the sweep).
#[derive(Debug, Clone)]
pub struct Current {
    pub id: i64,
    pub user_id: i64,
    pub user: String,
    pub role: String,
    pub scope: String,
    pub kind: Kind,
    pub end_at: Option<i64>,
    pub start_at: i64,
}

impl FromRow for Current {
    fn from_row(r: &Row<'_>) -> Result<Current> {
        Ok(Current {
            id: r.get(0)?,
            user_id: r.get(1)?,
            user: r.get(2)?,
            role: r.get(3)?,
            scope: r.get(4)?,
            kind: r.get(5)?,
            end_at: r.get(6)?,
            start_at: r.get(7)?,
        })
    }
}

/// What became of an assignment (for applying a review's decision).
#[derive(Debug, Clone)]
pub struct Fate {
    pub user_id: i64,
    pub removed_at: Option<i64>,
    pub end_at: Option<i64>,
    pub scope: String,
}

pub fn state(start: i64, end: Option<i64>, removed: Option<i64>, now: i64) -> &'static str {
    if removed.is_some() {
        "removed"
    } else if end.is_some_and(|e| e <= now) {
        "ended"
    } else if start > now {
        "scheduled"
    } else {
        "in effect"
    }
}

const COLUMNS: &str = "a.id, u.name, a.role, a.scope, a.kind, a.start_at, a.end_at, \
     a.justification, a.ticket, a.created_by, a.removed_at";

const CURRENT: &str = "SELECT a.id, u.id, u.name, a.role, a.scope, a.kind, a.end_at, a.start_at \
     FROM assignments a JOIN users u ON u.id = a.user_id";

/// In effect or scheduled at `?n`: not removed and not ended.
fn live(n: u8) -> String {
    format!("a.removed_at IS NULL AND (a.end_at IS NULL OR a.end_at > ?{n})")
}

fn from_row(r: &Row<'_>, now: i64) -> Result<Assignment> {
    let start_at: i64 = r.get(5)?;
    let end_at: Option<i64> = r.get(6)?;
    Ok(Assignment {
        id: r.get(0)?,
        user: r.get(1)?,
        role: r.get(2)?,
        scope: r.get(3)?,
        kind: r.get(4)?,
        start: rfc3339(from_unix(start_at)),
        end: end_at.map(|e| rfc3339(from_unix(e))),
        source: "assignment".to_string(),
        request: None,
        justification: r.get(7)?,
        ticket: r.get(8)?,
        created_by: r.get(9)?,
        state: state(start_at, end_at, r.get(10)?, now).to_string(),
        start_at,
        end_at,
    })
}

impl Db {
    pub fn assignment(&self, id: i64, now: i64) -> Result<Option<Assignment>> {
        self.query_row(
            &format!(
                "SELECT {COLUMNS} FROM assignments a JOIN users u ON u.id = a.user_id WHERE a.id = ?1"
            ),
            params![id],
            |r| from_row(r, now),
        )
        .optional()
    }

    /// The assignment of `user_id`/`role`/`scope`/`kind` in effect or scheduled (one
    /// lookup: index `assignments_by_grant`).
    pub fn current_assignment(
        &self,
        user_id: i64,
        role: &str,
        scope: &str,
        kind: Kind,
        now: i64,
    ) -> Result<Option<Assignment>> {
        self.query_row(
            &format!(
                "SELECT {COLUMNS} FROM assignments a JOIN users u ON u.id = a.user_id \
                 WHERE a.user_id = ?1 AND a.role = ?2 AND a.scope = ?3 AND a.kind = ?4 AND {} \
                 ORDER BY a.id LIMIT 1",
                live(5)
            ),
            params![user_id, role, scope, kind, now],
            |r| from_row(r, now),
        )
        .optional()
    }

    /// `current_assignment` by the user's name.
    pub fn current_assignment_named(
        &self,
        user: &str,
        role: &str,
        scope: &str,
        kind: Kind,
        now: i64,
    ) -> Result<Option<Assignment>> {
        self.query_row(
            &format!(
                "SELECT {COLUMNS} FROM assignments a JOIN users u ON u.id = a.user_id \
                 WHERE u.name = ?1 AND a.role = ?2 AND a.scope = ?3 AND a.kind = ?4 AND {} \
                 ORDER BY a.id LIMIT 1",
                live(5)
            ),
            params![user, role, scope, kind, now],
            |r| from_row(r, now),
        )
        .optional()
    }

    /// Assignments, by user, role, scope and kind; with `all`, ended and removed ones too.
    pub fn list_assignments(
        &self,
        user: Option<&str>,
        role: Option<&str>,
        kind: Option<Kind>,
        all: bool,
        now: i64,
    ) -> Result<Vec<Assignment>> {
        let mut w = Filters::default();
        if let Some(user) = &user {
            w.add("u.name = ?", user);
        }
        if let Some(role) = &role {
            w.add("a.role = ?", role);
        }
        if let Some(kind) = &kind {
            w.add("a.kind = ?", kind);
        }
        if !all {
            w.add(
                "a.removed_at IS NULL AND (a.end_at IS NULL OR a.end_at > ?)",
                &now,
            );
        }
        self.query_map(
            &format!(
                "SELECT {COLUMNS} FROM assignments a JOIN users u ON u.id = a.user_id \
                 WHERE TRUE{} ORDER BY u.name, a.role, a.scope, a.kind, a.id",
                w.sql
            ),
            &w.params,
            |r| from_row(r, now),
        )?
        .collect()
    }

    /// Activations shown as active assignments: running ones (with `all`, ended ones too).
    pub fn activations_as_assignments(
        &self,
        user: Option<&str>,
        role: Option<&str>,
        all: bool,
        now: i64,
    ) -> Result<Vec<Assignment>> {
        let mut w = Filters::default();
        if let Some(user) = &user {
            w.add("u.name = ?", user);
        }
        if let Some(role) = &role {
            w.add("r.role = ?", role);
        }
        if !all {
            w.add("r.status IN ('active', 'scheduled') AND r.end_at > ?", &now);
        }
        self.query_map(
            &format!(
                "SELECT r.id, u.name, r.role, r.scope, r.start_at, r.end_at, r.justification, r.ticket, r.status \
                 FROM requests r JOIN users u ON u.id = r.user_id \
                 WHERE r.status IN ('active', 'scheduled', 'expired', 'deactivated', 'revoked'){} \
                 ORDER BY u.name, r.role, r.id",
                w.sql
            ),
            &w.params,
            |r| {
                let start_at: i64 = r.get(4)?;
                let end_at: i64 = r.get(5)?;
                let status: Status = r.get(8)?;
                let ended = status.is_final();
                Ok(Assignment {
                    id: r.get(0)?,
                    user: r.get(1)?,
                    role: r.get(2)?,
                    scope: r.get(3)?,
                    kind: Kind::Active,
                    start: rfc3339(from_unix(start_at)),
                    end: Some(rfc3339(from_unix(end_at))),
                    source: "activation".to_string(),
                    request: Some(r.get(0)?),
                    justification: r.get(6)?,
                    ticket: r.get(7)?,
                    created_by: r.get(1)?,
                    state: if ended {
                        "ended"
                    } else {
                        state(start_at, Some(end_at), None, now)
                    }
                    .to_string(),
                    start_at,
                    end_at: Some(end_at),
                })
            },
        )?
        .collect()
    }

    pub fn insert_assignment(&self, a: &NewAssignment<'_>) -> Result<i64> {
        self.insert(
            "INSERT INTO assignments (user_id, role, scope, kind, start_at, end_at, justification, ticket, created_by, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                a.user_id,
                a.role,
                a.scope,
                a.kind,
                a.start_at,
                a.end_at,
                a.justification,
                a.ticket,
                a.created_by,
                a.created_at
            ],
        )
    }

    pub fn remove_assignment(&self, id: i64, at: i64, by: &str) -> Result<()> {
        self.execute(
            "UPDATE assignments SET removed_at = ?1, removed_by = ?2 WHERE id = ?3 AND removed_at IS NULL",
            params![at, by, id],
        )?;
        Ok(())
    }

    /// A new end for an assignment. One that ends after `now` has an expiry still to come:
    /// the sweep records it when it comes (even if it recorded an earlier end, which a host
    /// whose clock is behind the sweep's may still see as current), and the eligibility
    /// counts again in `role list`.
    pub fn set_assignment_end(&self, id: i64, end: Option<i64>, now: i64) -> Result<()> {
        self.execute(
            "UPDATE assignments SET end_at = ?1, \
               expiry_recorded = CASE WHEN CAST(?1 AS BIGINT) IS NULL OR CAST(?1 AS BIGINT) > ?3 \
                                      THEN 0 ELSE expiry_recorded END \
             WHERE id = ?2",
            params![end, id, now],
        )?;
        Ok(())
    }

    /// Every assignment in effect or scheduled, by user, role and scope.
    pub fn live_assignments(&self, now: i64) -> Result<Vec<Current>> {
        self.query_map(
            &format!(
                "{CURRENT} WHERE {} ORDER BY u.name, a.role, a.scope",
                live(1)
            ),
            params![now],
            Current::from_row,
        )?
        .collect()
    }

    /// The assignments of `role` in effect or scheduled, by user and scope.
    /// The scopes assignments in effect or scheduled are at.
    pub fn live_scopes(&self, now: i64) -> Result<Vec<String>> {
        self.query_map(
            &format!(
                "SELECT DISTINCT a.scope FROM assignments a WHERE {} ORDER BY a.scope",
                live(1)
            ),
            params![now],
            |r| r.get(0),
        )?
        .collect()
    }

    pub fn live_assignments_of_role(&self, role: &str, now: i64) -> Result<Vec<Current>> {
        self.query_map(
            &format!(
                "{CURRENT} WHERE a.role = ?1 AND {} ORDER BY u.name, a.scope",
                live(2)
            ),
            params![role, now],
            Current::from_row,
        )?
        .collect()
    }

    pub fn assignment_fate(&self, id: i64) -> Result<Option<Fate>> {
        self.query_row(
            "SELECT user_id, removed_at, end_at, scope FROM assignments WHERE id = ?1",
            params![id],
            |r| {
                Ok(Fate {
                    user_id: r.get(0)?,
                    removed_at: r.get(1)?,
                    end_at: r.get(2)?,
                    scope: r.get(3)?,
                })
            },
        )
        .optional()
    }

    /// Assignments that ended by `now` and whose end is not on record yet.
    pub fn ended_unrecorded(&self, now: i64, limit: i64) -> Result<Vec<Current>> {
        self.query_map(
            &format!(
                "{CURRENT} WHERE a.removed_at IS NULL AND a.expiry_recorded = 0 AND a.end_at <= ?1 ORDER BY a.end_at, a.id LIMIT ?2"
            ),
            params![now, limit],
            Current::from_row,
        )?
        .collect()
    }

    /// Assignments `ids` whose end is written down in the log (a statement per 256).
    pub fn expiry_recorded(&self, ids: &[i64]) -> Result<()> {
        for chunk in ids.chunks(super::ROWS_PER_INSERT * 4) {
            let marks = super::placeholders(1, chunk.len());
            let values: Vec<&dyn ToValue> = chunk.iter().map(|id| id as &dyn ToValue).collect();
            self.execute(
                &format!("UPDATE assignments SET expiry_recorded = 1 WHERE id IN ({marks})"),
                &values,
            )?;
        }
        Ok(())
    }

    /// Assignments ending in (`from`, `to`] whose holders have not had reminder `kind`.
    pub fn ending_unreminded(
        &self,
        from: i64,
        to: i64,
        kind: &str,
        limit: i64,
    ) -> Result<Vec<Current>> {
        self.query_map(
            &format!(
                "{CURRENT} WHERE a.removed_at IS NULL AND a.end_at > ?1 AND a.end_at <= ?2 \
                   AND NOT EXISTS (SELECT 1 FROM reminders r WHERE r.assignment_id = a.id AND r.kind = ?3) \
                 ORDER BY a.id LIMIT ?4"
            ),
            params![from, to, kind, limit],
            Current::from_row,
        )?
        .collect()
    }

    pub fn insert_reminder(&self, assignment: i64, kind: &str) -> Result<()> {
        self.execute(
            "INSERT INTO reminders (assignment_id, kind) VALUES (?1, ?2)",
            params![assignment, kind],
        )?;
        Ok(())
    }

    /// Every role `user_id` holds at `now`: direct active assignments in effect, and
    /// activations, never past the eligibility they rest on.
    pub fn holdings(&self, user_id: i64, now: i64) -> Result<Vec<Held>> {
        self.query_map(
            "SELECT a.role, a.scope, a.end_at, a.id, NULL FROM assignments a JOIN users u ON u.id = a.user_id
              WHERE a.user_id = ?1 AND u.disabled = 0 AND a.kind = 'active' AND a.removed_at IS NULL
                AND a.start_at <= ?2 AND (a.end_at IS NULL OR a.end_at > ?2)
             UNION ALL
             SELECT r.role, r.scope,
                    CASE WHEN e.end_at IS NOT NULL AND e.end_at < r.end_at THEN e.end_at ELSE r.end_at END,
                    NULL, r.id
               FROM requests r JOIN users u ON u.id = r.user_id LEFT JOIN assignments e ON e.id = r.eligibility_id
              WHERE r.user_id = ?1 AND u.disabled = 0 AND r.status IN ('active', 'scheduled')
                AND r.start_at <= ?2 AND r.end_at > ?2
                -- An activation never outlasts the eligibility it rests on, however that changed,
                -- and one that rests on none (every request names one) is not held.
                AND e.id IS NOT NULL AND e.removed_at IS NULL AND (e.end_at IS NULL OR e.end_at > ?2)",
            params![user_id, now],
            |r| {
                Ok(Held {
                    role: r.get(0)?,
                    scope: r.get(1)?,
                    until: r.get(2)?,
                    assignment: r.get(3)?,
                    request: r.get(4)?,
                })
            },
        )?
        .collect()
    }

    /// Protected-role holders at `now`: whether the assignment `this` (or, without one, the
    /// user `user_id`) is a holder, and how many *permanent* holders there are besides.
    pub fn protected_holders(
        &self,
        role: &str,
        user_id: i64,
        this: Option<i64>,
        now: i64,
    ) -> Result<(bool, i64)> {
        let base = "SELECT count(*) FROM assignments a JOIN users u ON u.id = a.user_id \
             WHERE a.role = ?1 AND a.removed_at IS NULL AND u.disabled = 0 AND a.start_at <= ?2";
        let (mine, others) = match this {
            Some(_) => ("a.id = ?3", "a.id != ?3"),
            None => ("a.user_id = ?3", "a.user_id != ?3"),
        };
        let value = this.unwrap_or(user_id);
        let count = |sql: String| -> Result<i64> {
            self.query_row(&sql, params![role, now, value], |r| r.get(0))
        };
        let holder = count(format!(
            "{base} AND {mine} AND ((a.kind = 'active' AND (a.end_at IS NULL OR a.end_at > ?2)) \
             OR (a.kind = 'eligible' AND a.end_at IS NULL))"
        ))? > 0;
        let permanent_others = count(format!("{base} AND {others} AND a.end_at IS NULL"))?;
        Ok((holder, permanent_others))
    }

    /// Assignments and open requests of `role` (a policy may not remove a role in use).
    pub fn role_in_use(&self, role: &str, now: i64) -> Result<i64> {
        let a: i64 = self.query_row(
            &format!(
                "SELECT count(*) FROM assignments a WHERE a.role = ?1 AND {}",
                live(2)
            ),
            params![role, now],
            |r| r.get(0),
        )?;
        let r: i64 = self.query_row(
            "SELECT count(*) FROM requests WHERE role = ?1 AND status IN ('pending', 'scheduled', 'active') AND end_at > ?2",
            params![role, now],
            |r| r.get(0),
        )?;
        Ok(a + r)
    }

    /// For each of `roles` that has any: how many users are eligible for it, and how many
    /// hold it, at `now`. A few grouped queries, whatever the number of roles, on one
    /// snapshot; none reads all of a role's eligibilities.
    pub fn role_holders(
        &self,
        roles: &[&str],
        now: i64,
    ) -> Result<std::collections::HashMap<String, (i64, i64)>> {
        let mut counts = std::collections::HashMap::<String, (i64, i64)>::new();
        if roles.is_empty() {
            return Ok(counts);
        }
        let _snapshot = if self.in_transaction() {
            None
        } else {
            Some(self.read()?)
        };
        let mut eligible = |sql: String, values: &[&dyn ToValue], sign: i64| {
            self.query_each(&sql, values, |r| {
                counts.entry(r.get(0)?).or_default().0 += sign * r.get::<_, i64>(1)?;
                Ok(true)
            })
        };
        let roles_only: Vec<&dyn ToValue> = roles.iter().map(|r| r as &dyn ToValue).collect();
        // The users not disabled with an eligibility neither removed nor recorded as
        // expired, per role, as the triggers of migration 12 keep them ...
        let list = super::placeholders(1, roles.len());
        eligible(
            format!("SELECT role, users FROM role_counts WHERE role IN ({list})"),
            &roles_only,
            1,
        )?;
        // ... and less those whose counted eligibilities are all outside `now`: not started
        // yet, or ended and not yet recorded by the sweep (both few, found by the indexes
        // `assignments_scheduled` and `assignments_expiring`; `a.role || ''` keeps SQLite
        // from reading every eligibility of the role through `assignments_by_grant` instead).
        let list = super::placeholders(2, roles.len());
        let mut values: Vec<&dyn ToValue> = vec![&now];
        values.extend(roles.iter().map(|r| r as &dyn ToValue));
        eligible(
            format!(
                "SELECT c.role, count(*) FROM ( \
                   SELECT a.role, a.user_id FROM assignments a \
                    WHERE a.kind = 'eligible' AND a.removed_at IS NULL AND a.expiry_recorded = 0 \
                      AND a.end_at <= ?1 AND (a.role || '') IN ({list}) \
                   UNION \
                   SELECT a.role, a.user_id FROM assignments a \
                    WHERE a.kind = 'eligible' AND a.removed_at IS NULL AND a.expiry_recorded = 0 \
                      AND a.start_at > ?1 AND (a.role || '') IN ({list})) AS c \
                 JOIN users u ON u.id = c.user_id \
                 WHERE u.disabled = 0 AND NOT EXISTS ( \
                   SELECT 1 FROM assignments b \
                    WHERE b.user_id = c.user_id AND b.role = c.role AND b.kind = 'eligible' \
                      AND b.removed_at IS NULL AND b.start_at <= ?1 \
                      AND (b.end_at IS NULL OR b.end_at > ?1)) \
                 GROUP BY c.role"
            ),
            &values,
            -1,
        )?;
        self.query_each(
            &format!(
                "SELECT h.role, count(*) FROM ( \
                   SELECT a.role, a.user_id FROM assignments a \
                    WHERE a.role IN ({list}) AND a.kind = 'active' \
                      AND a.removed_at IS NULL AND a.start_at <= ?1 AND (a.end_at IS NULL OR a.end_at > ?1) \
                   UNION \
                   SELECT r.role, r.user_id FROM requests r \
                    WHERE r.role IN ({list}) AND r.status IN ('active', 'scheduled') \
                      AND r.start_at <= ?1 AND r.end_at > ?1) AS h \
                 JOIN users u ON u.id = h.user_id WHERE u.disabled = 0 GROUP BY h.role"
            ),
            &values,
            |r| {
                counts.entry(r.get(0)?).or_default().1 = r.get(1)?;
                Ok(true)
            },
        )?;
        Ok(counts)
    }

    /// Where the counts `role list` reads (migration 12's `role_holders` and `role_counts`)
    /// disagree with a count of the assignments themselves: the triggers keep them whatever
    /// writes, so a disagreement is a write the triggers did not see (a trigger dropped, or
    /// rows changed while one was) or a bug. Reads every eligibility: for `pim doctor` and
    /// `pim store recount`, never a hot path.
    pub fn count_drift(&self) -> Result<CountDrift> {
        let _snapshot = if self.in_transaction() {
            None
        } else {
            Some(self.read()?)
        };
        // One pass over the counted eligibilities, in no particular order, tallied by (role,
        // user) pair in memory: as many entries as `role_holders` has rows, not one per
        // assignment. (A GROUP BY over them sorted them all: 1,000,000 assignments, 62 MB.)
        let mut roles: Vec<String> = Vec::new();
        let mut role_ids: HashMap<String, usize> = HashMap::new();
        let mut intern = |role: String| -> usize {
            *role_ids.entry(role).or_insert_with_key(|r| {
                roles.push(r.clone());
                roles.len() - 1
            })
        };
        let mut kept: HashMap<(usize, i64), i64> = HashMap::new();
        self.query_each(
            "SELECT role, user_id, n FROM role_holders WHERE n <> 0",
            params![],
            |r| {
                kept.insert((intern(r.get(0)?), r.get(1)?), r.get(2)?);
                Ok(true)
            },
        )?;
        let mut counted: HashMap<(usize, i64), i64> = HashMap::new();
        self.query_each(
            "SELECT role, user_id FROM assignments \
              WHERE kind = 'eligible' AND removed_at IS NULL AND expiry_recorded = 0",
            params![],
            |r| {
                *counted.entry((intern(r.get(0)?), r.get(1)?)).or_default() += 1;
                Ok(true)
            },
        )?;
        let mut disabled = std::collections::HashSet::<i64>::new();
        self.query_each("SELECT id FROM users WHERE disabled <> 0", params![], |r| {
            disabled.insert(r.get(0)?);
            Ok(true)
        })?;
        // Each pair the count has that is kept with another number or not at all, and each
        // pair kept (not zero) that the count does not have.
        let pairs = counted
            .iter()
            .filter(|(pair, n)| kept.get(pair) != Some(n))
            .count()
            + kept
                .keys()
                .filter(|pair| !counted.contains_key(pair))
                .count();
        // Per role (few): the users not disabled with a counted eligibility, against what
        // `role_counts` keeps.
        let mut by_role = std::collections::BTreeMap::<String, (i64, i64)>::new();
        for (role, user) in counted.keys() {
            if !disabled.contains(user) {
                by_role.entry(roles[*role].clone()).or_default().1 += 1;
            }
        }
        self.query_each(
            "SELECT role, users FROM role_counts WHERE users <> 0",
            params![],
            |r| {
                by_role.entry(r.get(0)?).or_default().0 = r.get(1)?;
                Ok(true)
            },
        )?;
        let roles = by_role
            .into_iter()
            .filter(|(_, (kept, counted))| kept != counted)
            .map(|(role, (kept, counted))| RoleCountOff {
                role,
                kept,
                counted,
            })
            .collect();
        Ok(CountDrift {
            pairs: pairs as i64,
            roles,
        })
    }

    /// Whether this connection may write the counts: on PostgreSQL only the owner of the
    /// tables (or a role given more than `store grant` gives) may.
    pub fn may_recount(&self) -> Result<bool> {
        if self.backend() != super::Backend::Postgres {
            return Ok(true);
        }
        self.query_row(
            "SELECT pg_catalog.has_table_privilege('public.role_holders', 'INSERT') \
                AND pg_catalog.has_table_privilege('public.role_holders', 'DELETE') \
                AND pg_catalog.has_table_privilege('public.role_counts', 'INSERT') \
                AND pg_catalog.has_table_privilege('public.role_counts', 'DELETE')",
            params![],
            |r| r.get(0),
        )
    }

    /// On PostgreSQL, before statements that run with the owner's rights: refuse a search
    /// path where another role may create objects (what migrations check first).
    pub fn refuse_planted_objects(&self) -> Result<()> {
        if self.backend() == super::Backend::Postgres {
            super::pg::refuse_planted_objects(self)?;
        }
        Ok(())
    }

    /// In the caller's write transaction, on PostgreSQL: keep writers outside pim from the
    /// assignments and users until it ends (pim's own wait for the log's head), as migration
    /// 12 does before it counts: a row committed between a count and its use would be lost.
    pub fn lock_counted(&self) -> Result<()> {
        if self.backend() == super::Backend::Postgres {
            self.execute_batch("LOCK TABLE assignments, users IN SHARE ROW EXCLUSIVE MODE")?;
        }
        Ok(())
    }

    /// Count `role_holders` and `role_counts` again from the assignments (in the caller's
    /// write transaction, after `lock_counted`). On PostgreSQL only the owner of the tables
    /// may (`may_recount`).
    pub fn recount_role_holders(&self) -> Result<()> {
        // The holders first (on SQLite their insert trigger counts the roles, on PostgreSQL
        // nothing does), then the roles from them.
        self.execute_batch(&format!(
            "DELETE FROM role_holders; \
             INSERT INTO role_holders (role, user_id, n) {COUNTED_HOLDERS}; \
             DELETE FROM role_counts; \
             INSERT INTO role_counts (role, users) \
                 SELECT h.role, count(*) FROM role_holders h JOIN users u ON u.id = h.user_id \
                  WHERE u.disabled = 0 GROUP BY h.role;"
        ))
    }
}

/// Per (role, user), the eligibilities `role_holders` counts: neither removed nor recorded
/// as expired (started or not, ended or not: `role_holders` reads take those off). For
/// `store recount` (and migration 12's first count): SQLite sorts every one of them to group
/// them (1,000,000 assignments: 0.6 s and 55 MB grouped by user first, read in the order of
/// `assignments_by_user`; 2.6 s by role first, through `assignments_by_grant`).
const COUNTED_HOLDERS: &str = "SELECT role, user_id, count(*) AS n FROM assignments \
     WHERE kind = 'eligible' AND removed_at IS NULL AND expiry_recorded = 0 \
     GROUP BY user_id, role";

/// What `count_drift` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CountDrift {
    /// (role, user) pairs whose kept number of eligibilities is not the count's.
    pub pairs: i64,
    /// Roles whose kept number of eligible users is not the count's.
    pub roles: Vec<RoleCountOff>,
}

impl CountDrift {
    pub fn is_empty(&self) -> bool {
        self.pairs == 0 && self.roles.is_empty()
    }
}

/// One role's number of eligible users: as kept, and as counted from the assignments.
#[derive(Debug, Clone, Serialize)]
pub struct RoleCountOff {
    pub role: String,
    pub kept: i64,
    pub counted: i64,
}

/// The conditions of a `WHERE` and their parameters, numbered as they are added: only the
/// filters given reach the query planner (`?1 IS NULL OR u.name = ?1` would keep it from
/// every index, a full scan of a growing table).
#[derive(Default)]
struct Filters<'a> {
    sql: String,
    params: Vec<&'a dyn ToValue>,
}

impl<'a> Filters<'a> {
    /// `AND condition`, its one `?` bound to `value`.
    fn add(&mut self, condition: &str, value: &'a dyn ToValue) {
        self.params.push(value);
        let n = self.params.len();
        self.sql.push_str(" AND ");
        self.sql
            .push_str(&condition.replacen('?', &format!("?{n}"), 1));
    }
}
