//! The contract's fixed vocabularies: assignment kinds, request statuses (with the
//! transitions a request may make) and approvers' verdicts. Stored and shown as the
//! contract's lowercase words.

use serde::Serialize;
use std::fmt;

/// Whether an assignment makes a role available (eligible) or gives it (active).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Eligible,
    Active,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Eligible => "eligible",
            Kind::Active => "active",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "eligible" => Some(Kind::Eligible),
            "active" => Some(Kind::Active),
            _ => None,
        }
    }
}

/// Where an activation request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for approval.
    Pending,
    /// Approved (or needing none), starting later.
    Scheduled,
    Active,
    /// Ran to its end (or, for an extension, was applied to the activation it extends).
    Expired,
    /// Ended early by its holder.
    Deactivated,
    /// Ended early by an administrator, or by the end of what it rested on.
    Revoked,
    Denied,
    /// Withdrawn before it started.
    Canceled,
    /// Not decided in time.
    TimedOut,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::Pending,
        Status::Scheduled,
        Status::Active,
        Status::Expired,
        Status::Deactivated,
        Status::Revoked,
        Status::Denied,
        Status::Canceled,
        Status::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Scheduled => "scheduled",
            Status::Active => "active",
            Status::Expired => "expired",
            Status::Deactivated => "deactivated",
            Status::Revoked => "revoked",
            Status::Denied => "denied",
            Status::Canceled => "canceled",
            Status::TimedOut => "timed_out",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A final request never changes again.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Scheduled | Status::Active)
    }

    /// Still holding or waiting to hold its role (not final).
    pub fn is_open(self) -> bool {
        !self.is_final()
    }

    /// The transitions of the contract.
    pub fn may_become(self, next: Status) -> bool {
        use Status::*;
        match self {
            // An extension that is applied closes as expired: its time now belongs to the
            // activation it extends.
            Pending => matches!(
                next,
                Scheduled | Active | Denied | Canceled | TimedOut | Expired
            ),
            Scheduled => matches!(next, Active | Canceled | Revoked | Expired),
            Active => matches!(next, Expired | Deactivated | Revoked),
            _ => false,
        }
    }
}

/// An approver's decision on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "approve" => Some(Verdict::Approve),
            "deny" => Some(Verdict::Deny),
            _ => None,
        }
    }
}

macro_rules! words {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<$t> for serde_json::Value {
            fn from(v: $t) -> serde_json::Value {
                serde_json::Value::String(v.as_str().to_string())
            }
        }

        impl crate::store::ToValue for $t {
            fn to_value(&self) -> crate::store::Value {
                crate::store::Value::Text(self.as_str().to_string())
            }
        }

        impl crate::store::FromValue for $t {
            fn from_value(v: crate::store::Value) -> Result<Self, String> {
                let s = String::from_value(v)?;
                <$t>::parse(&s).ok_or_else(|| format!("'{s}' is not a {}", stringify!($t)))
            }
        }
    )*};
}
words!(Kind, Status, Verdict);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_requests_never_change_and_words_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            if s.is_final() {
                assert!(Status::ALL.iter().all(|&n| !s.may_become(n)), "{s}");
            }
            assert!(
                !s.may_become(Status::Pending),
                "nothing goes back to pending"
            );
        }
        assert!(Status::Active.may_become(Status::Revoked));
        assert!(!Status::Active.may_become(Status::Canceled));
        assert_eq!(Kind::parse("active"), Some(Kind::Active));
        assert_eq!(Verdict::parse("deny"), Some(Verdict::Deny));
        assert_eq!(Verdict::parse("Deny"), None);
    }
}
