//! Receipts: one activation's audit events, each with its inclusion proof in a signed
//! checkpoint of the log, and the policy in force (the `policy.apply` event before them, whose
//! details name the policy's SHA-256). A receipt is verified offline, without the database,
//! by `pim receipt verify` and by `examples/verify_receipt.py` (standard library only); any
//! changed byte fails it, and so does a chain hash computed again from a changed `prev_hash`
//! (the statement signs each event's hash).

use crate::audit::StoredEvent;
use crate::checkpoint::VerifierKey;
use crate::error::{Error, Result};
use crate::merkle;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Receipts this pim makes: the statement names each event's chain hash, and the requests
/// to extend the activation, whose events the receipt holds too.
pub const FORMAT: &str = "pim-receipt/4";
/// Receipts of pims before it, still verified: they hold the request's own events only (an
/// extension of it, a request of its own, is not in them).
pub const FORMAT_3: &str = "pim-receipt/3";
/// Older still: their chain hashes are not signed for either (an event's `prev_hash` could be
/// changed and its `hash` computed again), only its fields.
pub const FORMAT_2: &str = "pim-receipt/2";

/// One event of a receipt, with where it sits in the tree and the proof of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenEvent {
    /// The thirteen chained fields as strings, in order (see `audit`).
    pub fields: Vec<String>,
    pub prev_hash: String,
    pub hash: String,
    /// Its leaf's index in the tree (seq − 1).
    pub index: u64,
    /// RFC 9162 inclusion proof, base64 hashes, leaf to root.
    pub proof: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub format: String,
    pub request: i64,
    /// The requests to extend it, whatever became of them: in format 4 (there even when
    /// none), never before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Vec<i64>>,
    /// The policy's SHA-256, as the `policy.apply` event below records it.
    pub policy_sha256: String,
    /// The checkpoint (a signed note) the proofs lead to.
    pub checkpoint: String,
    /// The log's verifier key (the verifier must be given the same, from a trusted place).
    pub key: String,
    /// A signed note by the same key stating what no inclusion proof can: that these are
    /// *all* the request's events (none left out), and which policy was in force when it was
    /// made (the latest `policy.apply` before it), and each event's place in the hash chain
    /// (its `hash`, which its fields and `prev_hash` must give: the tree proves the fields
    /// only). Its body: `pim receipt of ORIGIN`, `request N`, `extensions X1,X2,...` (format
    /// 4 on), `events S1:HASH1,S2:HASH2,...` (`events S1,S2,...` in format 2), `policy
    /// SHA256`, `tree SIZE`, a line each.
    pub statement: String,
    /// Every event of the request and of its extensions that took effect, oldest first.
    pub events: Vec<ProvenEvent>,
}

/// The body of a receipt's statement for `events`, each its seq and, from format 3 on
/// (`hashes`), its chain hash; from format 4 on, the request's `extensions`.
pub fn statement_body(
    origin: &str,
    request: i64,
    extensions: Option<&[i64]>,
    events: &[(i64, &str)],
    hashes: bool,
    policy: &str,
    size: u64,
) -> String {
    let events: Vec<String> = events
        .iter()
        .map(|(seq, hash)| {
            if hashes {
                format!("{seq}:{hash}")
            } else {
                seq.to_string()
            }
        })
        .collect();
    let extensions = extensions.map_or(String::new(), |x| {
        let x: Vec<String> = x.iter().map(i64::to_string).collect();
        format!("extensions {}\n", x.join(","))
    });
    format!(
        "pim receipt of {origin}\nrequest {request}\n{extensions}events {}\npolicy {policy}\ntree {size}\n",
        events.join(",")
    )
}

impl ProvenEvent {
    pub fn new(e: &StoredEvent, proof: &[merkle::Hash]) -> ProvenEvent {
        ProvenEvent {
            fields: e.fields().to_vec(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
            index: (e.seq - 1) as u64,
            proof: proof.iter().map(|h| B64.encode(h)).collect(),
        }
    }

    /// Check the event against its own hash and its inclusion in the tree of `size`
    /// leaves with `root`.
    fn check(&self, size: u64, root: &merkle::Hash) -> std::result::Result<(), String> {
        if self.fields.len() != 13 {
            return Err("an event does not have the thirteen fields".into());
        }
        if self.index >= size || self.fields[0] != (self.index + 1).to_string() {
            return Err(format!("event {} is at the wrong index", self.fields[0]));
        }
        let canonical = serde_json::to_vec(&self.fields).map_err(|e| e.to_string())?;
        let mut chained = sha2::Sha256::default();
        sha2::Digest::update(&mut chained, self.prev_hash.as_bytes());
        sha2::Digest::update(&mut chained, &canonical);
        if hex::encode(sha2::Digest::finalize(chained)) != self.hash {
            return Err(format!("event {} does not match its hash", self.fields[0]));
        }
        let proof: Vec<merkle::Hash> = self
            .proof
            .iter()
            .map(|p| B64.decode(p).ok().and_then(|b| b.try_into().ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("event {} has a malformed proof", self.fields[0]))?;
        let leaf = merkle::leaf_hash(&canonical);
        if !merkle::verify_inclusion(&leaf, self.index, size, &proof, root) {
            return Err(format!(
                "event {} is not in the checkpoint's tree",
                self.fields[0]
            ));
        }
        Ok(())
    }
}

/// What a verified receipt shows.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub request: i64,
    /// The requests to extend it, each shown by its own events in the receipt.
    pub extensions: Vec<i64>,
    pub events: usize,
    pub tree_size: u64,
    pub policy_sha256: String,
}

/// Verify a receipt offline with the log's verifier key (from a trusted place).
pub fn verify(text: &str, key: &str) -> Result<Verified> {
    let bad = |why: String| Error::Refused(format!("The receipt does not verify: {why}."));
    let r: Receipt =
        serde_json::from_str(text).map_err(|e| bad(format!("it is not a receipt ({e})")))?;
    if r.format != FORMAT && r.format != FORMAT_3 && r.format != FORMAT_2 {
        return Err(bad(format!("its format is {}, not {FORMAT}", r.format)));
    }
    let current = r.format == FORMAT;
    let none = Vec::new();
    let named = match (&r.extensions, current) {
        (Some(x), true) => x,
        (None, false) => &none,
        (Some(_), false) => {
            return Err(bad(format!(
                "a receipt of {} names no extensions",
                r.format
            )))
        }
        (None, true) => return Err(bad(format!("a receipt of {FORMAT} names its extensions"))),
    };
    // The same blanks trimmed as examples/verify_receipt.py trims.
    let blank = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    if r.key.trim_matches(blank) != key.trim_matches(blank) {
        return Err(bad("it names another key than the one given".into()));
    }
    let key = VerifierKey::parse(key)?;
    let cp = key
        .open(&r.checkpoint)
        .map_err(|e| bad(format!("its checkpoint: {e}")))?;
    let statement = key
        .open_note(&r.statement)
        .map_err(|e| bad(format!("its statement: {e}")))?;
    let events: Vec<(i64, &str)> = r
        .events
        .iter()
        .map(|e| {
            let seq = e.fields.first().and_then(|s| s.parse().ok()).unwrap_or(0);
            (seq, e.hash.as_str())
        })
        .collect();
    let hashes = r.format != FORMAT_2;
    if statement
        != statement_body(
            &cp.origin,
            r.request,
            current.then_some(&named[..]),
            &events,
            hashes,
            &r.policy_sha256,
            cp.size,
        )
    {
        return Err(bad(
            "its events, request, policy or size are not those its signed statement names".into(),
        ));
    }
    let request = r.request.to_string();
    // An event's `extends` detail (an extension's request and its applying).
    let extends = |e: &ProvenEvent| {
        serde_json::from_str::<serde_json::Value>(e.fields.get(12).map_or("", String::as_str))
            .ok()
            .and_then(|d| d.get("extends").cloned())
    };
    // Of the request itself: from format 4 on, never an extension's (whose events are in
    // the receipt of the activation it extends).
    if r.events.first().is_none_or(|e| {
        e.fields.get(3).map(String::as_str) != Some("activation.request")
            || e.fields.get(7) != Some(&request)
            || (current && extends(e).is_some())
    }) {
        return Err(bad("it does not begin with the request".into()));
    }
    let extensions: Vec<String> = named.iter().map(i64::to_string).collect();
    let mut last = None;
    for e in &r.events {
        e.check(cp.size, &cp.root).map_err(bad)?;
        if e.fields[7] != request && !extensions.contains(&e.fields[7]) {
            return Err(bad(format!("event {} is of another request", e.fields[0])));
        }
        if last.is_some_and(|last| e.index <= last) {
            return Err(bad("its events are out of order".into()));
        }
        last = Some(e.index);
        // Every extension applied in it is of this request.
        if current
            && e.fields[3] == "activation.extend"
            && extends(e).and_then(|x| x.as_i64()) != Some(r.request)
        {
            return Err(bad(format!(
                "event {} extends another request than {request}",
                e.fields[0]
            )));
        }
    }
    // Each extension named is one: its request (in the receipt) says it extends this one.
    for (i, x) in extensions.iter().enumerate() {
        let asks = |e: &ProvenEvent| {
            e.fields[7] == *x
                && e.fields[3] == "activation.request"
                && extends(e).and_then(|d| d.as_i64()) == Some(r.request)
        };
        if *x == request || extensions[..i].contains(x) || !r.events.iter().any(asks) {
            return Err(bad(format!(
                "request {x} is not shown to be an extension of request {request}"
            )));
        }
    }
    Ok(Verified {
        request: r.request,
        extensions: named.clone(),
        events: r.events.len(),
        tree_size: cp.size,
        policy_sha256: r.policy_sha256,
    })
}
