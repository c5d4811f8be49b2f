//! The questions security alerts ask of the store.

use super::{Db, FromRow};
use crate::error::Result;
use crate::params;

/// An assignment in effect at `?n` of an enabled user.
fn in_effect(n: u8) -> String {
    format!("a.removed_at IS NULL AND u.disabled = 0 AND a.start_at <= ?{n} AND (a.end_at IS NULL OR a.end_at > ?{n})")
}

impl Db {
    fn names(&self, sql: &str, params: &[&dyn super::ToValue]) -> Result<Vec<String>> {
        self.query_map(sql, params, |r| r.get(0))?.collect()
    }

    fn pairs(&self, sql: &str, params: &[&dyn super::ToValue]) -> Result<Vec<(String, String)>> {
        self.query_map(sql, params, FromRow::from_row)?.collect()
    }

    /// Who holds or may activate `role` at `now`.
    pub fn holders_of(&self, role: &str, now: i64) -> Result<Vec<String>> {
        self.names(
            &format!("SELECT DISTINCT u.name FROM assignments a JOIN users u ON u.id = a.user_id WHERE a.role = ?1 AND {} ORDER BY u.name", in_effect(2)),
            params![role, now],
        )
    }

    /// Who holds `role` permanently and directly (break-glass) at `now`.
    pub fn permanent_holders_of(&self, role: &str, now: i64) -> Result<Vec<String>> {
        self.names(
            &format!("SELECT DISTINCT u.name FROM assignments a JOIN users u ON u.id = a.user_id WHERE a.role = ?1 AND a.kind = 'active' AND a.end_at IS NULL AND {} ORDER BY u.name", in_effect(2)),
            params![role, now],
        )
    }

    /// People's permanent active assignments in effect: (user, role).
    pub fn standing_assignments(&self, now: i64) -> Result<Vec<(String, String)>> {
        self.pairs(
            &format!(
                "SELECT u.name, a.role FROM assignments a JOIN users u ON u.id = a.user_id \
                 WHERE a.kind = 'active' AND a.end_at IS NULL AND u.kind = 'user' AND {} ORDER BY a.role, u.name",
                in_effect(1)
            ),
            params![now],
        )
    }

    /// Eligible assignments held since before `since` and not activated since: (user, role).
    pub fn unused_eligibility(&self, since: i64, now: i64) -> Result<Vec<(String, String)>> {
        self.pairs(
            &format!(
                "SELECT u.name, a.role FROM assignments a JOIN users u ON u.id = a.user_id \
                 WHERE a.kind = 'eligible' AND {} AND a.start_at <= ?1 \
                   AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.user_id = a.user_id AND r.role = a.role \
                                   AND r.status IN ('active', 'expired', 'deactivated', 'revoked') AND r.start_at >= ?1) \
                 ORDER BY a.role, u.name",
                in_effect(2)
            ),
            params![since, now],
        )
    }

    /// Who activated a role more than `more_than` times in [`from`, `to`]: (user, role, n).
    pub fn frequent_activations(
        &self,
        from: i64,
        to: i64,
        more_than: i64,
    ) -> Result<Vec<(String, String, i64)>> {
        self.query_map(
            "SELECT u.name, r.role, count(*) FROM requests r JOIN users u ON u.id = r.user_id \
             WHERE r.status IN ('active', 'expired', 'deactivated', 'revoked') AND r.start_at >= ?1 AND r.start_at <= ?2 \
             GROUP BY u.name, r.role HAVING count(*) > ?3 ORDER BY u.name, r.role",
            params![from, to, more_than],
            FromRow::from_row,
        )?
        .collect()
    }

    /// Authenticators locked since `since`, or blocked for good.
    pub fn locked_authenticators(&self, since: i64) -> Result<Vec<String>> {
        self.names(
            "SELECT DISTINCT principal FROM audit_events WHERE time >= ?1 AND action = 'mfa.lock' \
             AND principal IS NOT NULL UNION SELECT name FROM users WHERE mfa_blocked = 1 ORDER BY 1",
            params![since],
        )
    }

    /// Accounts that failed to sign in, or were throttled, since `since`.
    pub fn failing_accounts(&self, since: i64) -> Result<Vec<String>> {
        self.names(
            "SELECT DISTINCT actor FROM audit_events WHERE time >= ?1 \
             AND action IN ('token.fail', 'account.lock', 'refusal.throttle') ORDER BY 1",
            params![since],
        )
    }

    pub fn blocked_authenticators(&self) -> Result<Vec<String>> {
        self.names(
            "SELECT name FROM users WHERE mfa_blocked = 1 ORDER BY name",
            params![],
        )
    }

    /// People eligible at `now` who have no authenticator: (user, role).
    pub fn eligible_without_authenticator(&self, now: i64) -> Result<Vec<(String, String)>> {
        self.pairs(
            &format!(
                "SELECT DISTINCT u.name, a.role FROM assignments a JOIN users u ON u.id = a.user_id \
                 WHERE a.kind = 'eligible' AND u.totp_secret IS NULL AND u.kind = 'user' AND {} ORDER BY u.name",
                in_effect(1)
            ),
            params![now],
        )
    }
}
