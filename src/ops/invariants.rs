//! Property tests: no sequence of operations leaves a user holding a role without a valid
//! eligibility (or a direct assignment), the policy's approval, and an audit trail; the
//! protected role never loses its last holder; the chain always verifies.

use super::testing::*;
use super::{ActivationInput, AssignInput, End, Pim};
use crate::clock::FixedClock;
use crate::params;
use crate::scope::Scope;
use chrono::Duration;
use proptest::prelude::*;

const USERS: [&str; 3] = ["bob", "carol", "admin"];
const ROLES: [&str; 4] = ["db-admin", "ticketed", "approved", "global-admin"];
const SCOPES: [&str; 4] = ["/", "/prod", "/prod/db", "/production"];

#[derive(Debug, Clone)]
enum Op {
    Assign {
        user: usize,
        role: usize,
        scope: usize,
        active: bool,
        days: i64,
        /// Hours until it starts (0: now).
        later: i64,
    },
    /// Remove the `pick`-th assignment in effect (modulo how many there are).
    Unassign {
        pick: usize,
    },
    Activate {
        user: usize,
        role: usize,
        scope: usize,
        good_code: bool,
        minutes: i64,
        ticket: bool,
    },
    Deactivate {
        user: usize,
        role: usize,
    },
    Disable {
        user: usize,
    },
    Enable {
        user: usize,
    },
    Advance {
        minutes: i64,
    },
    /// The break-glass admin decides the `pick`-th pending request.
    Decide {
        pick: usize,
        approve: bool,
        good_code: bool,
    },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    // Weighted so that many activations succeed: eligible assignments and activations are
    // common, disabling is rare, durations mostly fit the roles' maxima.
    prop_oneof![
        4 => (0..3usize, 0..4usize, 0..3usize, prop::bool::weighted(0.2), 1..40i64,
              prop_oneof![3 => Just(0i64), 1 => 1..48i64])
            .prop_map(|(user, role, scope, active, days, later)| Op::Assign { user, role, scope, active, days, later }),
        2 => any::<usize>().prop_map(|pick| Op::Unassign { pick }),
        6 => (0..3usize, 0..4usize, 0..4usize, prop::bool::weighted(0.8), 30..300i64, any::<bool>()).prop_map(
            |(user, role, scope, good_code, minutes, ticket)| Op::Activate { user, role, scope, good_code, minutes, ticket }
        ),
        1 => (0..3usize, 0..4usize).prop_map(|(user, role)| Op::Deactivate { user, role }),
        1 => (0..3usize).prop_map(|user| Op::Disable { user }),
        2 => (0..3usize).prop_map(|user| Op::Enable { user }),
        2 => (1..600i64).prop_map(|minutes| Op::Advance { minutes }),
        1 => Just(Op::Sweep),
        2 => (any::<usize>(), prop::bool::weighted(0.8), prop::bool::weighted(0.8))
            .prop_map(|(pick, approve, good_code)| Op::Decide { pick, approve, good_code }),
    ]
}

fn apply(pim: &mut Pim, clock: &FixedClock, secrets: &[Vec<u8>], op: &Op) {
    let result = match op.clone() {
        Op::Assign {
            user,
            role,
            scope,
            active,
            days,
            later,
        } => pim
            .assign(
                "admin",
                AssignInput {
                    user: USERS[user].into(),
                    role: ROLES[role].into(),
                    scope: Scope::parse(SCOPES[scope]).unwrap(),
                    active,
                    start: (later > 0).then(|| pim.now() + Duration::hours(later)),
                    end: End::After(Duration::days(days)),
                    justification: Some("property".into()),
                    ticket: None,
                },
            )
            .map(|_| ()),
        Op::Unassign { pick } => {
            let current = pim
                .assignments(&super::AssignmentFilter::default())
                .unwrap();
            let current: Vec<_> = current
                .iter()
                .filter(|a| a.source == "assignment")
                .collect();
            if current.is_empty() {
                Ok(())
            } else {
                let a = current[pick % current.len()];
                let scope = Scope::parse(&a.scope).unwrap();
                pim.unassign(
                    "admin",
                    &a.user,
                    &a.role,
                    &scope,
                    a.kind == crate::model::Kind::Active,
                )
                .map(|_| ())
            }
        }
        Op::Activate {
            user,
            role,
            scope,
            good_code,
            minutes,
            ticket,
        } => {
            let code = if good_code {
                code(clock, &secrets[user])
            } else {
                "000000".to_string()
            };
            pim.activate(
                USERS[user],
                ActivationInput {
                    role: ROLES[role].into(),
                    scope: Some(Scope::parse(SCOPES[scope]).unwrap()),
                    duration: Some(Duration::minutes(minutes)),
                    start: None,
                    justification: Some("INC-1".into()),
                    ticket: ticket.then(|| "T-1".to_string()),
                    code: Some(code),
                },
            )
            .map(|_| ())
        }
        Op::Deactivate { user, role } => pim.deactivate(USERS[user], ROLES[role], None).map(|_| ()),
        Op::Disable { user } => pim.set_disabled("admin", USERS[user], true).map(|_| ()),
        Op::Enable { user } => pim.set_disabled("admin", USERS[user], false).map(|_| ()),
        Op::Advance { minutes } => {
            clock.advance(Duration::minutes(minutes));
            Ok(())
        }
        Op::Decide {
            pick,
            approve,
            good_code,
        } => {
            let pending = pim.decidable("admin").unwrap();
            if pending.is_empty() {
                Ok(())
            } else {
                let id = pending[pick % pending.len()].id;
                let code = if good_code {
                    code(clock, &secrets[2])
                } else {
                    "000000".to_string()
                };
                pim.decide("admin", id, approve, Some("reviewed"), Some(&code))
                    .map(|_| ())
            }
        }
        Op::Sweep => pim.sweep("cron").map(|_| ()),
    };
    if let Err(e) = result {
        // Refusals, conflicts, not-found and usage errors are fine; a database error is not.
        assert_ne!(e.exit_code(), 1, "{op:?} failed with {e}");
    }
}

/// id, user, role, scope, start, end, eligibility, user disabled
type InEffect = (i64, i64, String, String, i64, i64, i64, bool);
/// user, role, scope, kind, start, end, removed
type Eligibility = (i64, String, String, String, i64, Option<i64>, Option<i64>);

fn check_invariants(pim: &Pim) {
    let conn = pim.conn();
    let now = pim.now().timestamp();
    let policy = pim.policy().unwrap();
    // Every activation in effect rests on a valid eligibility, its policy, and its audit event.
    let mut stmt = conn
        .prepare(
            "SELECT r.id, r.user_id, r.role, r.scope, r.start_at, r.end_at, r.eligibility_id, u.disabled
               FROM requests r JOIN users u ON u.id = r.user_id
              WHERE r.status IN ('active', 'scheduled') AND r.start_at <= ?1 AND r.end_at > ?1",
        )
        .unwrap();
    let rows: Vec<InEffect> = stmt
        .query_map(params![now], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (id, user_id, role, scope, start, end, eligibility, disabled) in rows {
        assert!(!disabled, "request {id}: a disabled user holds {role}");
        let settings = &policy.roles[&role].settings;
        if settings.require_approval {
            let approvals: i64 = conn
                .query_row(
                    "SELECT count(DISTINCT d.approver) FROM decisions d JOIN requests r ON r.id = d.request_id \
                     JOIN users u ON u.id = r.user_id \
                     WHERE d.request_id = ?1 AND d.decision = 'approve' AND d.approver != u.name",
                    params![id],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(
                approvals >= i64::from(settings.min_approvals),
                "request {id}: {role} held without approval"
            );
        }
        let (e_user, e_role, e_scope, e_kind, e_start, e_end, removed): Eligibility = conn
            .query_row(
                "SELECT user_id, role, scope, kind, start_at, end_at, removed_at FROM assignments WHERE id = ?1",
                params![eligibility],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )
            .unwrap();
        assert_eq!(
            (e_user, e_role.as_str(), e_kind.as_str()),
            (user_id, role.as_str(), "eligible"),
            "request {id}"
        );
        assert!(
            removed.is_none(),
            "request {id} outlived the removal of its eligibility"
        );
        assert!(
            Scope::parse(&e_scope)
                .unwrap()
                .covers(&Scope::parse(&scope).unwrap()),
            "request {id}: scope"
        );
        assert!(
            e_start <= start && e_end.is_none_or(|e| e >= end),
            "request {id} outlasts its eligibility"
        );
        let mut audited = 0;
        let requested = crate::audit::Filter {
            action: Some("activation.request".to_string()),
            ..Default::default()
        };
        crate::audit::for_each(conn, &requested, None, |e| {
            let details: serde_json::Value = serde_json::from_str(&e.details).unwrap();
            if e.request == Some(id)
                && e.result == "ok"
                && details["mfa"] == serde_json::Value::Bool(settings.require_mfa)
            {
                audited += 1;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(audited, 1, "request {id} has no audit trail");
        if settings.require_mfa {
            // A code for the request's time step (or the one before) was consumed.
            let (created, last_step): (i64, Option<i64>) = conn
                .query_row(
                    "SELECT r.created_at, u.totp_last_step FROM requests r JOIN users u ON u.id = r.user_id WHERE r.id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert!(
                last_step.is_some_and(|s| s >= created / 30 - 1),
                "request {id}: no TOTP code was used"
            );
        }
    }
    // Every direct active assignment in effect was audited when it was made.
    let mut added = std::collections::HashSet::new();
    let made = crate::audit::Filter {
        action: Some("assignment.add".to_string()),
        ..Default::default()
    };
    crate::audit::for_each(conn, &made, None, |e| {
        let details: serde_json::Value = serde_json::from_str(&e.details).unwrap();
        if e.result == "ok" {
            if let Some(a) = details["assignment"].as_i64() {
                added.insert(a);
            }
        }
        Ok(())
    })
    .unwrap();
    let unaudited = conn
        .live_assignments(now)
        .unwrap()
        .into_iter()
        .filter(|a| !added.contains(&a.id))
        .filter(|a| {
            conn.assignment(a.id, now)
                .unwrap()
                .is_some_and(|x| x.start_at <= now)
        })
        .count();
    assert_eq!(unaudited, 0);
    // The protected role keeps a holder.
    let holders: i64 = conn
        .query_row(
            "SELECT count(*) FROM assignments a JOIN users u ON u.id = a.user_id WHERE a.role = 'global-admin' \
               AND a.removed_at IS NULL AND u.disabled = 0 AND a.start_at <= ?1 \
               AND ((a.kind = 'active' AND (a.end_at IS NULL OR a.end_at > ?1)) OR (a.kind = 'eligible' AND a.end_at IS NULL))",
            params![now],
            |r| r.get(0),
        )
        .unwrap();
    assert!(holders >= 1, "global-admin lost its last holder");
    // `role list` counts, kept by triggers, are what the assignments say now.
    for summary in pim.roles().unwrap() {
        let eligible: i64 = conn
            .query_row(
                "SELECT count(DISTINCT a.user_id) FROM assignments a JOIN users u ON u.id = a.user_id
                  WHERE a.role = ?1 AND a.kind = 'eligible' AND a.removed_at IS NULL AND u.disabled = 0
                    AND a.start_at <= ?2 AND (a.end_at IS NULL OR a.end_at > ?2)",
                params![summary.role.key, now],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            summary.eligible, eligible,
            "eligible for {}",
            summary.role.key
        );
    }
    // And the state is what the log says it is.
    let findings = crate::audit::verify_state(conn).unwrap();
    assert!(findings.is_empty(), "{findings:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn no_sequence_grants_a_role_without_eligibility_policy_and_audit(ops in proptest::collection::vec(op(), 1..60)) {
        let (mut pim, clock, admin_secret) = pim();
        let mut secrets = Vec::new();
        for name in ["bob", "carol"] {
            pim.add_user("admin", name, None, None).unwrap();
            let e = enrol(&mut pim, name);
            secrets.push(crate::mfa::from_base32(&e.secret).unwrap());
        }
        secrets.push(admin_secret);
        for op in &ops {
            apply(&mut pim, &clock, &secrets, op);
            check_invariants(&pim);
            // Each step is at least one TOTP step apart, so a good code is not a replay.
            clock.advance(Duration::seconds(30));
        }
        prop_assert!(crate::audit::verify(pim.conn()).unwrap().ok);
    }
}
