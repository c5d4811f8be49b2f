//! The write path's recorder: every operation that changes state is handed one, and
//! appending an audit event and queuing the notifications it calls for is one call
//! (`record`). Nothing in the core appends to the log any other way, and a test build
//! refuses a transaction that changed state without an event (`store::Tx::commit`).

use super::notices;
use crate::audit::{self, Event};
use crate::error::Result;
use crate::notify::Notice;
use crate::policy::Policy;
use crate::store::Db;
use chrono::{DateTime, Utc};

/// A write transaction as an operation sees it: the store (through `Deref`), the instant
/// the change happens at, and the policy in force.
pub(crate) struct Recorder<'a> {
    db: &'a Db,
    pub now: DateTime<Utc>,
    pub policy: &'a Policy,
}

impl<'a> Recorder<'a> {
    pub(crate) fn new(db: &'a Db, now: DateTime<Utc>, policy: &'a Policy) -> Recorder<'a> {
        Recorder { db, now, policy }
    }

    /// Append `event` to the log and queue the notifications it calls for (none for a
    /// refusal). Returns the event's number.
    pub fn record(&self, event: Event) -> Result<i64> {
        let seq = audit::append(self.db, self.now, event.clone())?;
        if event.result == "ok" {
            notices::for_event(self.db, self.policy, self.now, &event)?;
        }
        Ok(seq)
    }

    /// `record` for several events, appended together (a few statements, not a few an
    /// event); their numbers.
    pub fn record_all(&self, events: Vec<Event>) -> Result<Vec<i64>> {
        let seqs = audit::append_all(self.db, self.now, events.clone())?;
        for event in events.iter().filter(|e| e.result == "ok") {
            notices::for_event(self.db, self.policy, self.now, event)?;
        }
        Ok(seqs)
    }

    /// `record`, with a notice the event alone does not describe (a review's reviewers).
    pub fn record_with(&self, event: Event, notice: Notice) -> Result<i64> {
        let seq = audit::append(self.db, self.now, event)?;
        crate::notify::enqueue(self.db, self.policy, self.now, notice)?;
        Ok(seq)
    }

    /// Append `event` without notifying anyone (the database's first state, made before
    /// anyone could be told).
    pub fn record_quietly(&self, event: Event) -> Result<i64> {
        audit::append(self.db, self.now, event)
    }
}

impl std::ops::Deref for Recorder<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}
