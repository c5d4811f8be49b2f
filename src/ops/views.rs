//! Who may read what. Reads need a reason: a caller who is not an enabled pim user sees
//! nothing (but `check`); a user sees their own status, requests, assignments and events;
//! other people's data needs `users`, `assign`, `audit` or `review` over its scope;
//! approvers see the requests they may decide; a review is read by its reviewers, its
//! creator and holders of `review` over its scope (in a self-review, each user their own).

use super::activation::{Request, Status};
use super::approvals::Decider;
use super::assignments::{Assignment, AssignmentFilter};
use super::reviews::Review;
use super::{holdings, not_a_user, users, Pim};
use crate::audit::Event;
use crate::error::{Error, Result};
use crate::scope::Scope;
use crate::store::Db;

/// The permissions that let a user see other people's data within their scope.
const OVERSIGHT: [&str; 4] = ["users", "assign", "audit", "review"];

/// Whether `user` may see other people's data at `scope` (one of `OVERSIGHT` over it).
pub(crate) fn oversees(
    conn: &Db,
    policy: &crate::policy::Policy,
    user: &users::User,
    scope: &Scope,
    now: i64,
) -> Result<bool> {
    for p in OVERSIGHT {
        if super::has_permission(conn, policy, user, p, scope, now)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Someone reading pim's state, and how far they may see.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub name: String,
    /// Scopes over which the viewer holds `users`, `assign`, `audit` or `review`.
    oversight: Vec<Scope>,
    /// Scopes over which the viewer holds `review`.
    review: Vec<Scope>,
    /// Scopes over which the viewer holds `audit`.
    audit: Vec<Scope>,
    /// Scopes over which the viewer holds `policy`.
    policy: Vec<Scope>,
}

/// How much of a review a viewer may read (`Viewer::review_access`).
enum ReviewAccess {
    Whole,
    Own,
    None,
}

/// `text` with every e-mail address but `own` replaced.
fn hide_addresses(text: &str, own: Option<&str>) -> String {
    let mut out = Vec::new();
    for word in text.split(' ') {
        let bare = word.trim_matches(|c: char| "<>()[]{},;:\"'".contains(c));
        if bare.contains('@') && Some(bare) != own {
            out.push(word.replace(bare, "(an e-mail address)"));
        } else {
            out.push(word.to_string());
        }
    }
    out.join(" ")
}

fn refused(what: &str) -> Error {
    Error::Refused(format!(
        "{what} needs the 'users', 'assign', 'audit' or 'review' permission. Activate a role that grants one (see `pim role list`)."
    ))
}

impl Viewer {
    /// Whether the viewer may see `user`'s data at `scope`.
    pub fn sees(&self, user: &str, scope: &str) -> bool {
        user == self.name
            || Scope::parse(scope).is_ok_and(|s| self.oversight.iter().any(|o| o.covers(&s)))
    }

    /// Whether the viewer may see other people at all (some oversight somewhere).
    pub fn oversees_anyone(&self) -> bool {
        !self.oversight.is_empty()
    }

    /// Whether the viewer oversees everything (oversight over `/`).
    pub fn oversees_all(&self) -> bool {
        self.oversight.iter().any(|s| s == &Scope::root())
    }

    /// Whether the viewer may read the whole audit log.
    pub fn audits(&self) -> bool {
        self.audit.iter().any(|s| s == &Scope::root())
    }

    /// Whether the viewer may read the policy's settings (which may name hosts and hooks).
    pub fn reads_policy(&self) -> bool {
        self.policy
            .iter()
            .chain(&self.audit)
            .any(|s| s == &Scope::root())
    }

    fn reviews_at(&self, scope: &str) -> bool {
        Scope::parse(scope).is_ok_and(|s| self.review.iter().any(|r| r.covers(&s)))
    }

    /// How much of review `r` the viewer may read: all of it (its creator, a named reviewer,
    /// a holder of `review` over its scope), or in a self-review their own items (`has_own`:
    /// it has some), or nothing.
    fn review_access(&self, r: &Review, has_own: bool) -> ReviewAccess {
        if r.created_by == self.name
            || (!r.self_review && r.reviewers.iter().any(|x| x == &self.name))
            || self.reviews_at(&r.scope)
        {
            ReviewAccess::Whole
        } else if r.self_review && has_own {
            ReviewAccess::Own
        } else {
            ReviewAccess::None
        }
    }
}

impl Pim {
    /// The viewer `actor`: an enabled pim user. Anyone else is refused (exit 3).
    pub fn viewer(&self, actor: &str) -> Result<Viewer> {
        let user = match users::find(&self.conn, actor)? {
            Some(u) if !u.disabled => u,
            Some(_) => {
                return Err(Error::Refused(format!(
                    "Your pim account '{actor}' is disabled. Ask an administrator to enable it."
                )))
            }
            None => return Err(not_a_user(actor)),
        };
        let policy = self.policy()?;
        let mut v = Viewer {
            name: user.name.clone(),
            oversight: Vec::new(),
            review: Vec::new(),
            audit: Vec::new(),
            policy: Vec::new(),
        };
        for h in holdings(&self.conn, user.id, self.now().timestamp())? {
            let Some(role) = policy.roles.get(&h.role) else {
                continue;
            };
            if OVERSIGHT.iter().any(|p| role.grants(p)) {
                v.oversight.push(h.scope.clone());
            }
            if role.grants("review") {
                v.review.push(h.scope.clone());
            }
            if role.grants("audit") {
                v.audit.push(h.scope.clone());
            }
            if role.grants("policy") {
                v.policy.push(h.scope.clone());
            }
        }
        Ok(v)
    }

    /// Users: everyone for a viewer who oversees anyone, otherwise only themself.
    pub fn users_seen_by(&self, v: &Viewer) -> Result<Vec<users::User>> {
        let mut list = self.users()?;
        if !v.oversees_anyone() {
            list.retain(|u| u.name == v.name);
        }
        Ok(list)
    }

    /// One user: yourself, or anyone for a viewer who oversees anyone.
    pub fn user_seen_by(&self, v: &Viewer, name: &str) -> Result<users::User> {
        if name != v.name && !v.oversees_anyone() {
            return Err(refused("Seeing another user"));
        }
        self.user(name)
    }

    /// A user's status, with only what the viewer may see of it.
    /// The user name closest to `name` (a typo away), for "did you mean"; only for a viewer
    /// who oversees someone (others learn no names this way).
    pub fn closest_user(&self, v: &Viewer, name: &str) -> Result<Option<String>> {
        if !v.oversees_anyone() {
            return Ok(None);
        }
        let wanted = name.to_lowercase();
        Ok(self
            .users()?
            .into_iter()
            .map(|u| {
                (
                    strsim::damerau_levenshtein(&wanted, &u.name.to_lowercase()),
                    u.name,
                )
            })
            .filter(|(d, n)| *d > 0 && *d <= 2.max(n.len() / 4))
            .min()
            .map(|(_, n)| n))
    }

    pub fn status_seen_by(&self, v: &Viewer, user: &str) -> Result<Status> {
        if user != v.name && !v.oversees_anyone() {
            return Err(refused("Seeing another user's status"));
        }
        let mut s = self.status(user)?;
        s.eligible.retain(|a| v.sees(&a.user, &a.scope));
        s.active.retain(|a| v.sees(&s.user, &a.scope));
        s.requests.retain(|r| v.sees(&r.user, &r.scope));
        Ok(s)
    }

    /// Assignments the viewer may see.
    pub fn assignments_seen_by(
        &self,
        v: &Viewer,
        filter: &AssignmentFilter,
    ) -> Result<Vec<Assignment>> {
        let others = filter.user.as_deref() != Some(v.name.as_str());
        if others && !v.oversees_anyone() {
            if filter.user.is_some() {
                return Err(refused("Seeing another user's assignments"));
            }
            let own = AssignmentFilter {
                user: Some(v.name.clone()),
                ..filter.clone()
            };
            return self.assignments(&own);
        }
        let mut list = self.assignments(filter)?;
        list.retain(|a| v.sees(&a.user, &a.scope));
        Ok(list)
    }

    /// Requests the viewer may see: their own, those they oversee, and those they may decide.
    pub fn requests_seen_by(&self, v: &Viewer, user: Option<&str>) -> Result<Vec<Request>> {
        let list = self.requests(user)?;
        let policy = self.policy()?;
        let me = users::get(&self.conn, &v.name)?;
        let decider = Decider::new(&self.conn, &policy, &me, self.now().timestamp());
        let mut out = Vec::new();
        for r in list {
            if v.sees(&r.user, &r.scope) || approver_of(&decider, &policy, &me, &r)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// One request, if the viewer may see it.
    pub fn request_seen_by(&self, v: &Viewer, id: i64) -> Result<Request> {
        let r = self.request(id)?;
        let policy = self.policy()?;
        let me = users::get(&self.conn, &v.name)?;
        let decider = Decider::new(&self.conn, &policy, &me, self.now().timestamp());
        if v.sees(&r.user, &r.scope) || approver_of(&decider, &policy, &me, &r)? {
            Ok(r)
        } else {
            // As if it were not there: who asked for what is not yours to learn.
            Err(super::approvals::hidden(id))
        }
    }

    /// A review as the viewer may see it: whole for its reviewers, its creator and holders of
    /// `review` over its scope; in a self-review, a user's own items only.
    pub fn review_seen_by(&self, v: &Viewer, id: i64) -> Result<Review> {
        let hidden = || {
            Error::NotFound(format!(
                "There is no review {id} that you may see. See `pim review list`."
            ))
        };
        let mut r = self.review(id).map_err(|e| match e {
            Error::NotFound(_) => hidden(),
            other => other,
        })?;
        match v.review_access(&r, r.items.iter().any(|i| i.user == v.name)) {
            ReviewAccess::Whole => Ok(r),
            ReviewAccess::Own => {
                r.items.retain(|i| i.user == v.name);
                r.total = r.items.len() as i64;
                r.decided = r.items.iter().filter(|i| i.decision.is_some()).count() as i64;
                Ok(r)
            }
            ReviewAccess::None => Err(hidden()),
        }
    }

    /// The reviews the viewer may read, without their items, each counted as
    /// `review_seen_by` shows it (read in one statement, not one a review).
    pub fn reviews_seen_by(&self, v: &Viewer) -> Result<Vec<Review>> {
        let now = self.now().timestamp();
        Ok(self
            .conn
            .review_summaries(&v.name, now)?
            .into_iter()
            .filter_map(|(mut r, own)| match v.review_access(&r, own.total > 0) {
                ReviewAccess::Whole => Some(r),
                ReviewAccess::Own => {
                    r.total = own.total;
                    r.decided = own.decided;
                    Some(r)
                }
                ReviewAccess::None => None,
            })
            .collect())
    }

    /// The outbox: whole for a viewer who oversees everyone, otherwise what concerns them.
    pub fn outbox_seen_by(
        &self,
        v: &Viewer,
        failed_only: bool,
    ) -> Result<Vec<crate::notify::Outgoing>> {
        let mut list = self.outbox(failed_only)?;
        if !v.oversees_all() {
            let own = self.user(&v.name)?.email;
            list.retain(|o| {
                o.recipients.iter().any(|r| r == &v.name)
                    || serde_json::from_str::<serde_json::Value>(&o.payload)
                        .is_ok_and(|p| p["user"] == v.name.as_str())
            });
            // Other people's addresses are theirs, also where a mail server's reply names one.
            for o in &mut list {
                for r in &mut o.recipients {
                    if r.contains('@') && Some(&*r) != own.as_ref() {
                        *r = "(an e-mail address)".to_string();
                    }
                }
                if let Some(e) = &mut o.last_error {
                    *e = hide_addresses(e, own.as_deref());
                }
            }
        }
        Ok(list)
    }

    /// One snapshot for a view of the log that is shown or handed on, durable on PostgreSQL
    /// (see `Db::durable_read`); none if a transaction is open already.
    fn durable_view(&self) -> Result<Option<crate::store::Tx<'_>>> {
        if self.conn.in_transaction() {
            return Ok(None);
        }
        Ok(Some(self.conn.durable_read()?))
    }

    /// Alerts, for a viewer who oversees everything.
    pub fn alerts_seen_by(&self, v: &Viewer) -> Result<Vec<super::Alert>> {
        if !v.oversees_all() {
            return Err(refused("Reading the security alerts (over /)"));
        }
        self.alerts()
    }

    /// Audit events for a viewer: the whole log with `audit` over `/`, otherwise only the
    /// events the viewer acted in or was the subject of. Handed over one at a time, in
    /// order (with `newest`, only the newest that many). Returns whether the view was
    /// narrowed to the viewer's own events.
    pub fn audit_seen_by(
        &self,
        v: &Viewer,
        mut filter: crate::audit::Filter,
        newest: Option<usize>,
        f: impl FnMut(crate::audit::StoredEvent) -> Result<()>,
    ) -> Result<bool> {
        let own = !v.audits();
        if own {
            filter.involving = Some(v.name.clone());
        }
        let _snapshot = self.durable_view()?;
        crate::audit::for_each(&self.conn, &filter, newest, f)?;
        Ok(own)
    }

    /// The whole log matching `filter`, for export: needs `audit` over `/`.
    pub fn audit_export_for(
        &self,
        v: &Viewer,
        filter: &crate::audit::Filter,
        f: impl FnMut(&crate::audit::EventRef<'_>) -> Result<()>,
    ) -> Result<()> {
        self.may_export_audit(v)?;
        let _snapshot = self.durable_view()?;
        crate::audit::for_each_ref(&self.conn, filter, f)
    }

    /// Refused unless `v` may export the audit log (asked before an output file is made).
    pub fn may_export_audit(&self, v: &Viewer) -> Result<()> {
        if !v.audits() {
            return Err(Error::Refused(
                "Exporting the audit log needs the 'audit' permission. Activate a role that grants it (such as security-reader).".to_string(),
            ));
        }
        Ok(())
    }

    /// Check the whole chain (any pim user; root without being one: the CLI decides).
    pub fn verify_audit(&self) -> Result<crate::audit::Verification> {
        crate::audit::verify(&self.conn)
    }

    /// Check the chain, and that the log extends every signed checkpoint in `notes`
    /// ((name, text) each): a checkpoint whose signature is not this log's key's fails the
    /// verification, named.
    pub fn verify_audit_against(
        &self,
        notes: &[(String, String)],
    ) -> Result<crate::audit::Verification> {
        let key = crate::checkpoint::VerifierKey::parse(&self.verifier_key()?)?;
        let mut heads = Vec::new();
        for (name, text) in notes {
            match key.open(text) {
                Ok(c) => heads.push(crate::audit::Head {
                    size: c.size,
                    root: c.root,
                    name: name.clone(),
                }),
                Err(e) => {
                    return Ok(crate::audit::Verification {
                        ok: false,
                        events: 0,
                        head: None,
                        root: None,
                        checkpoints: notes.len(),
                        bad_seq: None,
                        reason: Some(format!("{name}: {e}")),
                    })
                }
            }
        }
        crate::audit::verify_against(&self.conn, &heads)
    }

    fn signer(&self) -> Result<crate::checkpoint::NoteSigner> {
        let origin = crate::checkpoint::origin(&self.conn.instance()?);
        let seed = self.vault.derive("checkpoint signing key")?;
        Ok(crate::checkpoint::NoteSigner::new(&origin, &seed))
    }

    /// A receipt for activation request `id` (its requester, or a viewer with `audit` over
    /// `/`; root: the CLI decides): its events with inclusion proofs in a new signed
    /// checkpoint, and the policy in force.
    pub fn receipt(&mut self, v: Option<&Viewer>, id: i64) -> Result<String> {
        let now = self.now().timestamp();
        let request = self
            .conn
            .request_by_id(id, now)?
            .ok_or_else(|| super::approvals::hidden(id))?;
        if let Some(v) = v {
            if request.user != v.name && !v.audits() {
                return Err(super::approvals::hidden(id));
            }
        }
        if let Some(original) = request.extends {
            return Err(Error::Usage(format!(
                "Request {id} extends request {original}: its events are in the receipt of request {original} (`pim receipt {original}`)."
            )));
        }
        // The request's events and those of the requests to extend it (an extension is a
        // request of its own, `extends` N in its details): a receipt that left them out would
        // show the activation's first end, not the one it ran to. Which they are is read from
        // the log (the requests' `extends` column is the database's word alone).
        let mut extensions = Vec::new();
        crate::audit::for_each(
            &self.conn,
            &crate::audit::Filter {
                action: Some("activation.request".to_string()),
                user: Some(request.user.clone()),
                role: Some(request.role.clone()),
                ..Default::default()
            },
            None,
            |e| {
                let extends = serde_json::from_str::<serde_json::Value>(&e.details)
                    .ok()
                    .and_then(|d| d["extends"].as_i64());
                if let (Some(x), "ok", Some(true)) =
                    (e.request, e.result.as_str(), extends.map(|o| o == id))
                {
                    if x != id && !extensions.contains(&x) {
                        extensions.push(x);
                    }
                }
                Ok(())
            },
        )?;
        let note = self.checkpoint(None)?;
        let key = self.verifier_key()?;
        let opened = crate::checkpoint::VerifierKey::parse(&key)?.open(&note)?;
        let size = opened.size;
        let mut events = Vec::new();
        for of in std::iter::once(id).chain(extensions.iter().copied()) {
            crate::audit::for_each(
                &self.conn,
                &crate::audit::Filter {
                    request: Some(of),
                    ..Default::default()
                },
                None,
                |e| {
                    events.push(e);
                    Ok(())
                },
            )?;
        }
        events.sort_by_key(|e| e.seq);
        // Only what took effect: others' refused attempts on it are theirs, not the receipt's.
        events.retain(|e| e.result == "ok");
        let first = events.first().map(|e| e.seq).unwrap_or(i64::MAX);
        // The policy in force: the latest policy.apply before the request.
        let mut policy_sha256 = String::new();
        crate::audit::for_each(
            &self.conn,
            &crate::audit::Filter {
                action: Some("policy.apply".to_string()),
                ..Default::default()
            },
            None,
            |e| {
                if e.seq < first && e.result == "ok" {
                    policy_sha256 = serde_json::from_str::<serde_json::Value>(&e.details)
                        .ok()
                        .and_then(|d| d["sha256"].as_str().map(str::to_string))
                        .unwrap_or_default();
                }
                Ok(())
            },
        )?;
        let conn = &self.conn;
        let mut get = |l, i| conn.merkle_node(l, i);
        let mut proven = Vec::new();
        for e in &events {
            let proof = crate::merkle::inclusion_proof(&mut get, (e.seq - 1) as u64, size)?;
            proven.push(crate::receipt::ProvenEvent::new(e, &proof));
        }
        let chained: Vec<(i64, &str)> = events.iter().map(|e| (e.seq, e.hash.as_str())).collect();
        let statement = self.signer()?.sign_text(&crate::receipt::statement_body(
            &opened.origin,
            id,
            Some(&extensions[..]),
            &chained,
            true,
            &policy_sha256,
            size,
        ));
        let receipt = crate::receipt::Receipt {
            format: crate::receipt::FORMAT.to_string(),
            request: id,
            extensions: Some(extensions),
            policy_sha256,
            checkpoint: note,
            key,
            statement,
            events: proven,
        };
        Ok(serde_json::to_string_pretty(&receipt).unwrap_or_default() + "\n")
    }

    /// The RFC 9162 consistency proof between the log's first `from` and first `to` events
    /// (default: all), for a viewer with `audit` over `/` (root: the CLI decides).
    pub fn prove_consistency(
        &mut self,
        v: Option<&Viewer>,
        from: u64,
        to: Option<u64>,
    ) -> Result<serde_json::Value> {
        use base64::Engine;
        if let Some(v) = v {
            self.may_export_audit(v)?;
        }
        let size = self.write_system(|tx, _, _| {
            let size = tx.audit_count()?;
            crate::audit::complete_tree(tx, size)?;
            Ok(size as u64)
        })?;
        let to = to.unwrap_or(size);
        if from > to || to > size {
            return Err(Error::Usage(format!(
                "Prove from a size to a larger one, at most the log's {size} events."
            )));
        }
        let b64 = |h: &crate::merkle::Hash| base64::engine::general_purpose::STANDARD.encode(h);
        let conn = &self.conn;
        let mut get = |l, i| conn.merkle_node(l, i);
        let proof = crate::merkle::consistency_proof(&mut get, from, to)?;
        Ok(serde_json::json!({
            "old_size": from,
            "new_size": to,
            "old_root": b64(&crate::audit::tree_root(conn, from)?),
            "new_root": b64(&crate::audit::tree_root(conn, to)?),
            "proof": proof.iter().map(b64).collect::<Vec<_>>(),
        }))
    }

    /// Give the policy's witnesses a signed checkpoint when the log grew since the last one
    /// (`pim sweep`): recorded as `audit.witness`; the command and webhook through the
    /// outbox (retried like notifications), the file appended to now. Returns the size of
    /// the checkpoint published, if one was.
    pub fn publish_checkpoint(
        &mut self,
        actor: &str,
        protect: &crate::privilege::Protected,
    ) -> Result<Option<u64>> {
        let policy = self.policy()?;
        let witness = policy.witness.clone();
        if !witness.any() {
            return Ok(None);
        }
        let size = self.conn.audit_count()? as u64;
        if size <= self.conn.witnessed()? {
            return Ok(None);
        }
        let note = self.checkpoint(None)?;
        let opened = crate::checkpoint::VerifierKey::parse(&self.verifier_key()?)?.open(&note)?;
        let published = opened.size;
        self.write_system(|tx, now, _| {
            use base64::Engine;
            let payload = serde_json::to_string(&crate::notify::Notice::new(
                "audit.checkpoint",
                now,
                actor,
                note.clone(),
            ))
            .unwrap_or_default();
            let to = vec!["witness".to_string()];
            for (present, channel) in [
                (witness.command.is_some(), "command"),
                (witness.webhook.is_some(), "webhook"),
            ] {
                if present {
                    tx.insert_outgoing(
                        "audit.checkpoint",
                        channel,
                        &to,
                        &payload,
                        now.timestamp(),
                    )?;
                }
            }
            tx.record(
                Event::new(actor, "audit.witness")
                    .detail("size", published)
                    .detail(
                        "root",
                        base64::engine::general_purpose::STANDARD.encode(opened.root),
                    ),
            )?;
            // The witness event itself is not news for the next sweep.
            tx.set_witnessed(published + 1)?;
            Ok(())
        })?;
        if let Some(path) = &witness.file {
            use std::io::Write;
            let mut f = crate::privilege::append_output(std::path::Path::new(path), protect)
                .map_err(|e| Error::Environment(format!("The witness file: {e}.")))?;
            f.write_all(note.as_bytes())?;
            f.write_all(b"\n")?;
        }
        Ok(Some(published))
    }

    /// Who held and who was eligible for what at `at` (unix seconds), from the log alone, for
    /// a viewer with `audit` over `/` (root: the CLI decides).
    pub fn replay_at(&self, v: Option<&Viewer>, at: i64) -> Result<crate::replay::Snapshot> {
        if let Some(v) = v {
            self.may_export_audit(v)?;
        }
        let _snapshot = self.durable_view()?;
        crate::replay::at(&self.conn, at)
    }

    /// Replay the log against the state tables (see `audit::verify_state`).
    pub fn verify_state(&self) -> Result<Vec<String>> {
        let _snapshot = self.durable_view()?;
        crate::audit::verify_state(&self.conn)
    }

    /// The key that verifies this log's checkpoints, in signed-note format.
    pub fn verifier_key(&self) -> Result<String> {
        Ok(self.signer()?.verifier_key())
    }

    /// A signed checkpoint of the log as it stands (C2SP tlog-checkpoint, signed-note),
    /// for a viewer with `audit` over `/` (or root: the CLI decides).
    pub fn checkpoint(&mut self, v: Option<&Viewer>) -> Result<String> {
        if let Some(v) = v {
            self.may_export_audit(v)?;
        }
        // The tree is filled in for a log from before it (no event: nothing of pim's state
        // changes).
        let size = self.write_system(|tx, _, _| {
            let size = tx.audit_count()?;
            crate::audit::complete_tree(tx, size)?;
            Ok(size as u64)
        })?;
        let root = crate::audit::tree_root(&self.conn, size)?;
        // Never sign a tree that does not extend the last one given to the witnesses (its
        // size and root are on record): the stored tree an owner edited is refused here, at a
        // cost of O(log n), not of a rescan.
        let mut last: Option<(u64, crate::merkle::Hash)> = None;
        crate::audit::for_each(
            &self.conn,
            &crate::audit::Filter {
                action: Some("audit.witness".to_string()),
                ..Default::default()
            },
            Some(1),
            |e| {
                use base64::Engine;
                let d: serde_json::Value = serde_json::from_str(&e.details).unwrap_or_default();
                let root = d["root"]
                    .as_str()
                    .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
                    .and_then(|b| b.try_into().ok());
                if let (Some(n), Some(r)) = (d["size"].as_u64(), root) {
                    last = Some((n, r));
                }
                Ok(())
            },
        )?;
        if let Some((old, old_root)) = last.filter(|(n, _)| *n <= size) {
            let conn = &self.conn;
            let proof =
                crate::merkle::consistency_proof(&mut |l, i| conn.merkle_node(l, i), old, size)?;
            if !crate::merkle::verify_consistency(old, size, &old_root, &root, &proof) {
                return Err(Error::Environment(format!(
                    "The log's tree does not extend the checkpoint of {old} events given to the witnesses: it was changed. Nothing was signed; run `pim audit verify`."
                )));
            }
        }
        let signer = self.signer()?;
        Ok(signer.sign(&crate::checkpoint::Checkpoint {
            origin: crate::checkpoint::origin(&self.conn.instance()?),
            size,
            root,
        }))
    }

    /// The policy in force, for a viewer with `policy` or `audit` over `/` (its notification
    /// settings may name hosts and hooks).
    pub fn policy_seen_by(&self, v: &Viewer) -> Result<std::sync::Arc<crate::policy::Policy>> {
        if !v.reads_policy() {
            return Err(Error::Refused(
                "Exporting the policy needs the 'policy' or 'audit' permission over /. See `pim role list` for what each role allows."
                    .to_string(),
            ));
        }
        self.policy()
    }
}

/// Whether the one `decider` stands for may decide `r` (or has decided it).
fn approver_of(
    decider: &Decider<'_>,
    policy: &crate::policy::Policy,
    me: &users::User,
    r: &Request,
) -> Result<bool> {
    let (Some(role), Ok(scope)) = (policy.role(&r.role), Scope::parse(&r.scope)) else {
        return Ok(false);
    };
    if r.decisions.iter().any(|d| d.approver == me.name) {
        return Ok(true);
    }
    decider.may_decide(role, &scope)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mail_server_replies_hide_other_peoples_addresses() {
        let e = "permanent error (550): 5.1.1 <carol@example.com>: Recipient address rejected, bob@example.com ok";
        let shown = super::hide_addresses(e, Some("bob@example.com"));
        assert!(!shown.contains("carol@example.com"), "{shown}");
        assert!(shown.contains("<(an e-mail address)>"), "{shown}");
        assert!(shown.contains("bob@example.com"), "{shown}");
    }
}
