//! The append-only, hash-chained audit log.
//!
//! Each event is numbered without gaps from 1 and chained:
//! `hash = hex(SHA-256(prev_hash ‖ canonical))`, where `prev_hash` is the previous event's hash
//! as 64 hex characters (64 zeros for the first event) and `canonical` is the JSON array of
//! the event's thirteen fields as strings, in the export's column order, absent values as "":
//! `[seq, time, actor, action, principal, role, scope, request, justification, ticket,
//! expires, result, details]` (times in RFC 3339 UTC). Anyone can recompute it from a JSONL
//! export.

use crate::error::Result;
use crate::merkle;
use crate::store::audit::{MadeEvent, RawEvent};
use crate::store::Db;
use crate::time::{from_unix, rfc3339};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event about to be written.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub actor: String,
    pub action: String,
    pub principal: Option<String>,
    pub role: Option<String>,
    pub scope: Option<String>,
    pub request: Option<i64>,
    pub justification: Option<String>,
    pub ticket: Option<String>,
    pub expires: Option<i64>,
    pub result: String,
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    pub fn new(actor: &str, action: &str) -> Event {
        Event {
            actor: actor.to_string(),
            action: action.to_string(),
            result: "ok".to_string(),
            ..Event::default()
        }
    }
    pub fn principal(mut self, v: &str) -> Self {
        self.principal = Some(v.to_string());
        self
    }
    pub fn role(mut self, v: &str) -> Self {
        self.role = Some(v.to_string());
        self
    }
    pub fn scope(mut self, v: &str) -> Self {
        self.scope = Some(v.to_string());
        self
    }
    pub fn request(mut self, v: i64) -> Self {
        self.request = Some(v);
        self
    }
    pub fn justification(mut self, v: Option<&str>) -> Self {
        self.justification = v.map(str::to_string);
        self
    }
    pub fn ticket(mut self, v: Option<&str>) -> Self {
        self.ticket = v.map(str::to_string);
        self
    }
    pub fn expires(mut self, v: Option<i64>) -> Self {
        self.expires = v;
        self
    }
    /// A refusal: `result` carries the reason.
    pub fn refused(mut self, reason: &str) -> Self {
        self.result = reason.to_string();
        self
    }
    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

/// An event as stored, with its place in the chain.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub seq: i64,
    pub time: String,
    pub actor: String,
    pub action: String,
    pub principal: Option<String>,
    pub role: Option<String>,
    pub scope: Option<String>,
    pub request: Option<i64>,
    pub justification: Option<String>,
    pub ticket: Option<String>,
    pub expires: Option<String>,
    pub result: String,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// The export's columns, in order.
pub const COLUMNS: [&str; 15] = [
    "seq",
    "time",
    "actor",
    "action",
    "principal",
    "role",
    "scope",
    "request",
    "justification",
    "ticket",
    "expires",
    "result",
    "details",
    "prev_hash",
    "hash",
];

impl StoredEvent {
    /// The thirteen chained fields, borrowed and handed to `f`; absent as "".
    fn with_fields<T>(&self, f: impl FnOnce([&str; 13]) -> T) -> T {
        let seq = self.seq.to_string();
        let request = self.request.map(|r| r.to_string()).unwrap_or_default();
        fn o(v: &Option<String>) -> &str {
            v.as_deref().unwrap_or("")
        }
        f([
            &seq,
            &self.time,
            &self.actor,
            &self.action,
            o(&self.principal),
            o(&self.role),
            o(&self.scope),
            &request,
            o(&self.justification),
            o(&self.ticket),
            o(&self.expires),
            &self.result,
            &self.details,
        ])
    }

    /// The thirteen chained fields as strings, absent as "".
    pub fn fields(&self) -> [String; 13] {
        self.with_fields(|f| f.map(str::to_string))
    }

    /// The bytes the chain and the Merkle tree hash: the compact JSON array of the thirteen
    /// fields as strings.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.with_fields(|f| write_canonical(&mut out, &f));
        out
    }

    /// `canonical` as text (as PostgreSQL keeps it): JSON made from text is text.
    pub fn canonical_text(&self) -> String {
        String::from_utf8(self.canonical()).expect("JSON made from text is UTF-8")
    }

    /// The event's leaf in the Merkle tree: SHA-256(0x00 ‖ canonical).
    pub fn leaf(&self) -> merkle::Hash {
        merkle::leaf_hash(&self.canonical())
    }

    /// The hash this event must carry, given its fields and `prev_hash`.
    pub fn compute_hash(&self) -> String {
        hex::encode(chain_digest(self.prev_hash.as_bytes(), &self.canonical()))
    }
}

/// The compact JSON array of `fields` as strings, appended to `out`: exactly what
/// `serde_json` writes.
fn write_canonical(out: &mut Vec<u8>, fields: &[&str; 13]) {
    // Room for every field unescaped and the punctuation at once.
    out.reserve(fields.iter().map(|f| f.len()).sum::<usize>() + 4 * fields.len());
    out.extend_from_slice(b"[\"");
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\",\"");
        }
        escape_json(out, f.as_bytes());
    }
    out.extend_from_slice(b"\"]");
}

/// `text` escaped as `serde_json` escapes a string (`\"`, `\\`, the short escapes of
/// `\b \f \n \r \t`, any other control as `\u00xx`), runs of plain bytes copied at once.
fn escape_json(out: &mut Vec<u8>, text: &[u8]) {
    /// For each byte: 0 (copied as it is), or the letter after the backslash.
    const ESCAPE: [u8; 256] = {
        let mut table = [0u8; 256];
        let mut b = 0;
        while b < 0x20 {
            table[b] = b'u';
            b += 1;
        }
        table[0x08] = b'b';
        table[0x0c] = b'f';
        table[b'\n' as usize] = b'n';
        table[b'\r' as usize] = b'r';
        table[b'\t' as usize] = b't';
        table[b'"' as usize] = b'"';
        table[b'\\' as usize] = b'\\';
        table
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let escape = |out: &mut Vec<u8>, b: u8| {
        let short = ESCAPE[usize::from(b)];
        if short == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
    };
    // Plain bytes eight at a time: each word read says where its first escaped byte is.
    let (mut start, mut i) = (0, 0);
    while let Some(word) = text.get(i..i + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        match escaped(word) {
            0 => i += 8,
            found => {
                let at = i + found.trailing_zeros() as usize / 8;
                out.extend_from_slice(&text[start..at]);
                escape(out, text[at]);
                (start, i) = (at + 1, at + 1);
            }
        }
    }
    for (at, &b) in text.iter().enumerate().skip(i) {
        if ESCAPE[usize::from(b)] != 0 {
            out.extend_from_slice(&text[start..at]);
            escape(out, b);
            start = at + 1;
        }
    }
    out.extend_from_slice(&text[start..]);
}

/// The bytes of `word` (little-endian) that JSON escapes, a control (below 0x20), `"` or
/// `\\`, as the top bit of each: exact for the lowest such byte, which is all its caller
/// reads (a borrow may also mark a byte above it). Bytes of 0x80 and above (UTF-8's
/// multibyte parts) are never marked.
fn escaped(word: u64) -> u64 {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const TOPS: u64 = u64::from_le_bytes([0x80; 8]);
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & TOPS;
    below(word, 0x20)
        | below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1)
}

/// Makes the canonical bytes of events as `verify_against` reads them, reusing its
/// buffers: numbers are written without allocating, and a date is formatted once a day.
#[derive(Default)]
struct Canonical {
    seq: String,
    time: String,
    request: String,
    expires: String,
    /// The instant `time` is written for (events come in bursts of the same second).
    time_of: Option<i64>,
    /// The day (unix days) whose `YYYY-MM-DD` is `date`, for `time`; and the same for
    /// `expires`, which is most often another day (one cache for both was a date made
    /// afresh for every other instant).
    day: Option<i64>,
    date: String,
    expires_day: Option<i64>,
    expires_date: String,
}

impl Canonical {
    /// The canonical bytes of `e`, whose text fields are `text`, appended to `out`.
    fn write(&mut self, e: &ReadEvent, text: &str, out: &mut Vec<u8>) {
        let Canonical {
            seq,
            time,
            request,
            expires,
            time_of,
            day,
            date,
            expires_day,
            expires_date,
        } = self;
        let mut numbers = itoa::Buffer::new();
        seq.clear();
        seq.push_str(numbers.format(e.seq));
        request.clear();
        if let Some(r) = e.request {
            request.push_str(numbers.format(r));
        }
        if *time_of != Some(e.time) {
            instant(time, e.time, day, date);
            *time_of = Some(e.time);
        }
        expires.clear();
        if let Some(t) = e.expires {
            instant(expires, t, expires_day, expires_date);
        }
        let mut fields = [""; 9];
        let mut start = 0;
        for (field, &end) in fields.iter_mut().zip(&e.ends) {
            *field = &text[start..end];
            start = end;
        }
        let [actor, action, principal, role, scope, justification, ticket, result, details] =
            fields;
        write_canonical(
            out,
            &[
                seq.as_str(),
                time.as_str(),
                actor,
                action,
                principal,
                role,
                scope,
                request.as_str(),
                justification,
                ticket,
                expires.as_str(),
                result,
                details,
            ],
        );
    }
}

/// `rfc3339(from_unix(secs))` written into `out`; the date part is kept in `date` for the
/// next instant of the same `day`.
fn instant(out: &mut String, secs: i64, day: &mut Option<i64>, date: &mut String) {
    out.clear();
    if !(0..=crate::time::MAX_INSTANT).contains(&secs) {
        out.push_str(&rfc3339(from_unix(secs)));
        return;
    }
    let d = secs / 86_400;
    if *day != Some(d) {
        date.clear();
        date.push_str(&rfc3339(from_unix(d * 86_400))[..10]);
        *day = Some(d);
    }
    let s = secs % 86_400;
    out.push_str(date);
    // `Thh:mm:ssZ` in one write.
    let mut clock = *b"T00:00:00Z";
    for (at, n) in [(1, s / 3_600), (4, s % 3_600 / 60), (7, s % 60)] {
        clock[at] = b'0' + (n / 10) as u8;
        clock[at + 1] = b'0' + (n % 10) as u8;
    }
    out.push_str(std::str::from_utf8(&clock).expect("digits are ASCII"));
}

/// Append an event. Call it inside the transaction that makes the change. The core never
/// calls it but through `ops::Recorder::record`, which also queues the event's notifications
/// (a test keeps it so); tools that build a log (the benchmarks' filler) may.
pub fn append(conn: &Db, now: DateTime<Utc>, event: Event) -> Result<i64> {
    let seqs = append_all(conn, now, vec![event])?;
    Ok(seqs[0])
}

/// Append events in order, all at `now`; their numbers. The chain and the tree are made
/// here and stored in a few multi-row statements (the sweep writes down hundreds of events
/// a transaction: one round trip each would be most of its time on a server).
pub fn append_all(conn: &Db, now: DateTime<Utc>, events: Vec<Event>) -> Result<Vec<i64>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    // The log's end is kept for the whole transaction: bulk operations append thousands
    // of events in one.
    let (last_seq, mut prev_hash) = conn.audit_head()?.unwrap_or((0, GENESIS.to_string()));
    complete_tree(conn, last_seq)?;
    let time = rfc3339(now);
    let mut rows = Vec::with_capacity(events.len());
    let mut leaves = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        let mut stored = StoredEvent {
            seq: last_seq + 1 + i as i64,
            time: time.clone(),
            actor: event.actor,
            action: event.action,
            principal: event.principal,
            role: event.role,
            scope: event.scope,
            request: event.request,
            justification: event.justification,
            ticket: event.ticket,
            expires: event.expires.map(|t| rfc3339(from_unix(t))),
            result: event.result,
            details: serde_json::Value::Object(event.details).to_string(),
            prev_hash,
            hash: String::new(),
        };
        // The canonical bytes once, for the chain, the tree and (PostgreSQL) the row.
        let canonical = stored.canonical_text();
        stored.hash = hex::encode(chain_digest(
            stored.prev_hash.as_bytes(),
            canonical.as_bytes(),
        ));
        prev_hash = stored.hash.clone();
        leaves.push(merkle::leaf_hash(canonical.as_bytes()));
        rows.push((stored, now.timestamp(), event.expires, canonical));
    }
    conn.insert_events(&rows)?;
    add_leaves(conn, last_seq as u64, &leaves)?;
    Ok(rows.iter().map(|(e, ..)| e.seq).collect())
}

/// Add `leaves` to the stored Merkle tree from leaf index `first`, with the complete
/// subtrees they complete (their left halves read from the store once).
fn add_leaves(conn: &Db, first: u64, leaves: &[merkle::Hash]) -> Result<()> {
    let mut nodes: Vec<(u32, u64, merkle::Hash)> = Vec::with_capacity(leaves.len() * 2);
    // The newest left (even) node made here at each level.
    let mut left: Vec<Option<(u64, merkle::Hash)>> = Vec::new();
    for (index, leaf) in (first..).zip(leaves) {
        let mut node = *leaf;
        for (level, idx) in merkle::completed_by(index) {
            if level > 0 {
                let below = (level - 1) as usize;
                let sibling = match left.get(below).copied().flatten() {
                    Some((i, hash)) if i == idx * 2 => hash,
                    _ => conn.merkle_node(level - 1, idx * 2)?,
                };
                node = merkle::node_hash(&sibling, &node);
            }
            if idx.is_multiple_of(2) {
                if left.len() <= level as usize {
                    left.resize(level as usize + 1, None);
                }
                left[level as usize] = Some((idx, node));
            }
            nodes.push((level, idx, node));
        }
    }
    conn.insert_merkle_nodes(&nodes)
}

/// Make the stored Merkle tree cover the first `size` events (a log from before the tree,
/// or copied without it, is filled in once, in the writer's transaction).
pub(crate) fn complete_tree(conn: &Db, size: i64) -> Result<()> {
    let mut have = conn.merkle_leaves()?;
    while (have as i64) < size {
        let chunk = conn.events_after(&Filter::default(), have as i64, 4096)?;
        if chunk.is_empty() {
            break;
        }
        let mut leaves = Vec::with_capacity(chunk.len());
        for (e, seq) in chunk.iter().zip(have + 1..) {
            if e.seq as u64 != seq {
                return Err(crate::Error::Environment(format!(
                    "The audit log has no event {seq}; run `pim audit verify`."
                )));
            }
            leaves.push(e.leaf());
        }
        add_leaves(conn, have, &leaves)?;
        have += leaves.len() as u64;
    }
    Ok(())
}

/// The root of the log's Merkle tree over its first `size` events, from the stored tree.
pub fn tree_root(conn: &Db, size: u64) -> Result<merkle::Hash> {
    merkle::root(&mut |l, i| conn.merkle_node(l, i), size)
}

/// Which events to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub actor: Option<String>,
    pub user: Option<String>,
    pub role: Option<String>,
    pub action: Option<String>,
    /// Only events where this name is the actor or the principal (for callers without
    /// the `audit` permission).
    pub involving: Option<String>,
    /// Only the events of this activation request.
    pub request: Option<i64>,
}

/// Stream events in order (oldest first), or the newest `limit` when `newest` is set.
/// Rows are handed over one at a time, so memory stays flat however long the log.
pub fn for_each(
    conn: &Db,
    filter: &Filter,
    newest: Option<usize>,
    mut f: impl FnMut(StoredEvent) -> Result<()>,
) -> Result<()> {
    if let Some(limit) = newest {
        for e in conn.newest_events(filter, limit)? {
            f(e)?;
        }
        return Ok(());
    }
    // In chunks, each read to its end before it is handed over (see `Db::events_after`).
    const CHUNK: usize = 4096;
    let mut last = 0;
    loop {
        let chunk = conn.events_after(filter, last, CHUNK)?;
        let Some(end) = chunk.last().map(|e| e.seq) else {
            return Ok(());
        };
        last = end;
        let full = chunk.len() == CHUNK;
        for e in chunk {
            f(e)?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// An event as the export hands it on: borrowed, its instants written out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventRef<'a> {
    pub seq: i64,
    pub time: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub principal: Option<&'a str>,
    pub role: Option<&'a str>,
    pub scope: Option<&'a str>,
    pub request: Option<i64>,
    pub justification: Option<&'a str>,
    pub ticket: Option<&'a str>,
    pub expires: Option<&'a str>,
    pub result: &'a str,
    pub details: &'a str,
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

impl StoredEvent {
    pub fn borrowed(&self) -> EventRef<'_> {
        EventRef {
            seq: self.seq,
            time: &self.time,
            actor: &self.actor,
            action: &self.action,
            principal: self.principal.as_deref(),
            role: self.role.as_deref(),
            scope: self.scope.as_deref(),
            request: self.request,
            justification: self.justification.as_deref(),
            ticket: self.ticket.as_deref(),
            expires: self.expires.as_deref(),
            result: &self.result,
            details: &self.details,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        }
    }
}

/// A chunk of events as read for `for_each_ref`: their text one after another, and for
/// each its numbers, where its eleven text fields end and which optional ones are there.
#[derive(Default)]
struct Chunk {
    text: Vec<u8>,
    events: Vec<ChunkEvent>,
}

struct ChunkEvent {
    seq: i64,
    time: i64,
    request: Option<i64>,
    expires: Option<i64>,
    /// actor, action, principal, role, scope, justification, ticket, result, details,
    /// prev_hash, hash.
    ends: [usize; 11],
    /// Bit i: optional field i (principal, role, scope, justification, ticket) is there.
    present: u8,
}

/// `for_each` without a string made per field: each chunk of events is read to its end
/// into one buffer (see `Db::events_after`), then handed to `f` event by event, borrowed.
pub fn for_each_ref(
    conn: &Db,
    filter: &Filter,
    mut f: impl FnMut(&EventRef<'_>) -> Result<()>,
) -> Result<()> {
    const CHUNK: usize = 4096;
    let not_utf8 = || {
        crate::Error::Store(crate::store::StoreError::other(
            "a text column is not UTF-8",
        ))
    };
    let mut chunk = Chunk::default();
    let (mut time, mut expires, mut date) = (String::new(), String::new(), String::new());
    let (mut time_of, mut day) = (None, None);
    // The expiry's day apart: most often another day than the event's.
    let (mut expires_day, mut expires_date) = (None, String::new());
    let mut last = 0;
    loop {
        chunk.text.clear();
        chunk.events.clear();
        conn.events_after_raw(filter, last, CHUNK, |e| {
            let optional = [e.principal, e.role, e.scope, e.justification, e.ticket];
            let present = optional
                .iter()
                .enumerate()
                .fold(0u8, |bits, (i, o)| bits | (u8::from(o.is_some()) << i));
            let [principal, role, scope, justification, ticket] =
                optional.map(Option::unwrap_or_default);
            let texts = [
                e.actor,
                e.action,
                principal,
                role,
                scope,
                justification,
                ticket,
                e.result,
                e.details,
                e.prev_hash,
                e.hash,
            ];
            let mut ends = [0; 11];
            for (end, text) in ends.iter_mut().zip(texts) {
                chunk.text.extend_from_slice(text);
                *end = chunk.text.len();
            }
            chunk.events.push(ChunkEvent {
                seq: e.seq,
                time: e.time,
                request: e.request,
                expires: e.expires,
                ends,
                present,
            });
            Ok(true)
        })?;
        let Some(end) = chunk.events.last().map(|e| e.seq) else {
            return Ok(());
        };
        last = end;
        let full = chunk.events.len() == CHUNK;
        let text = std::str::from_utf8(&chunk.text).map_err(|_| not_utf8())?;
        let mut start = 0;
        for e in &chunk.events {
            let mut fields = [""; 11];
            for (field, &end) in fields.iter_mut().zip(&e.ends) {
                // Not at a character's boundary: one field's bytes are not UTF-8.
                *field = text.get(start..end).ok_or_else(not_utf8)?;
                start = end;
            }
            if time_of != Some(e.time) {
                instant(&mut time, e.time, &mut day, &mut date);
                time_of = Some(e.time);
            }
            if let Some(t) = e.expires {
                instant(&mut expires, t, &mut expires_day, &mut expires_date);
            }
            let [actor, action, principal, role, scope, justification, ticket, result, details, prev_hash, hash] =
                fields;
            let present = e.present;
            fn optional(present: u8, i: usize, v: &str) -> Option<&str> {
                (present & (1 << i) != 0).then_some(v)
            }
            f(&EventRef {
                seq: e.seq,
                time: &time,
                actor,
                action,
                principal: optional(present, 0, principal),
                role: optional(present, 1, role),
                scope: optional(present, 2, scope),
                request: e.request,
                justification: optional(present, 3, justification),
                ticket: optional(present, 4, ticket),
                expires: e.expires.map(|_| expires.as_str()),
                result,
                details,
                prev_hash,
                hash,
            })?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// How many events the log holds.
pub fn count(conn: &Db) -> Result<i64> {
    conn.audit_count()
}

/// The result of checking the whole chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verification {
    pub ok: bool,
    pub events: i64,
    /// The last event's hash when the chain holds.
    pub head: Option<String>,
    /// The root of the log's Merkle tree (hex), recomputed from the events.
    pub root: Option<String>,
    /// The checkpoints the log was checked against, all found consistent when `ok`.
    pub checkpoints: usize,
    /// The first bad event and why, when it does not.
    pub bad_seq: Option<i64>,
    pub reason: Option<String>,
}

/// Check every event: numbering without gaps, each `prev_hash` the previous `hash`, and
/// each `hash` recomputed from the stored fields.
pub fn verify(conn: &Db) -> Result<Verification> {
    verify_against(conn, &[])
}

/// A tree head the log must extend: `size` events whose Merkle root is `root`.
#[derive(Debug, Clone)]
pub struct Head {
    pub size: u64,
    pub root: merkle::Hash,
    /// What to call it in a finding (a checkpoint's file name).
    pub name: String,
}

/// Events one batch carries from one stage of `verify_against` to the next: the stages
/// after the reader wait for its first batch and the reader for their last, and a batch's
/// quarter of a megabyte of text stays in the cache while the next stage reads it (4,096
/// before: 100,000 events 10 % slower, 41 alternating runs; 256: 1,000,000 5 % slower).
const BATCH: usize = 1024;

/// A problem found at an event: its `seq` and what is wrong.
type Finding = Option<(i64, String)>;

/// Up to `BATCH` events as read: their text fields one after another in `text`, and for
/// each event its numbers, where its fields end and its stored hash.
#[derive(Default)]
struct ReadBatch {
    /// As stored: the chain's stage checks it is UTF-8.
    text: Vec<u8>,
    events: Vec<ReadEvent>,
}

/// An event as the reading stage hands it on.
struct ReadEvent {
    seq: i64,
    time: i64,
    request: Option<i64>,
    expires: Option<i64>,
    /// Where actor, action, principal, role, scope, justification, ticket, result and
    /// details end in its part of `ReadBatch::text`, which follows the event before's (an
    /// absent field is empty: canonically "" too).
    ends: [usize; 9],
    /// Its text is its canonical bytes as stored (PostgreSQL's, `each_event_made`), not its
    /// fields: `ends` are all 0 but the last, and the numbers are not read.
    made: bool,
    /// The stored hash, 64 hex characters (the reader stops at one that is not).
    hash: [u8; 64],
}

/// Canonical bytes of up to `BATCH` events, one after another, and where each ends.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// The second stage of `verify_against`: each event's canonical bytes, and its hash
/// checked against them and the hash before it (the reader checked each `prev_hash` is
/// that hash). Hands the bytes on to the tree; stops at the first problem, after handing on
/// the events before it.
fn chain_stage(
    batches: std::sync::mpsc::Receiver<ReadBatch>,
    read_spent: std::sync::mpsc::SyncSender<ReadBatch>,
    tree: std::sync::mpsc::SyncSender<Batch>,
    tree_spent: std::sync::mpsc::Receiver<Batch>,
    stop: &std::sync::atomic::AtomicBool,
) -> Finding {
    let mut prev = [0u8; 64];
    prev.copy_from_slice(GENESIS.as_bytes());
    let mut canonical = Canonical::default();
    for mut read in batches.iter() {
        let mut batch = tree_spent.try_recv().unwrap_or_else(|_| Batch {
            bytes: Vec::with_capacity(read.text.len() * 5 / 4 + 256 * read.events.len()),
            ends: Vec::with_capacity(read.events.len()),
        });
        // First each event's canonical bytes, up to one whose text cannot be read; then the
        // links of those, two at a time, in order: a link that does not hold comes before
        // the unreadable event in the log, and is the problem to name.
        let mut unreadable = None;
        // The batch's text checked at once (a call for each event's was a tenth of this
        // stage); only a batch that is not UTF-8 is checked event by event, to find where.
        let whole = std::str::from_utf8(&read.text).ok();
        if whole.is_some() && read.events.iter().all(|e| e.made) {
            // The text is the events' canonical bytes, one after another: handed on as it
            // is (its buffer taken, not copied), and this batch's buffer goes back to the
            // reader in its place.
            std::mem::swap(&mut batch.bytes, &mut read.text);
            let mut at = 0;
            batch.ends.extend(read.events.iter().map(|e| {
                at += e.ends[8];
                at
            }));
        } else {
            let mut at = 0;
            for e in &read.events {
                let span = at..at + e.ends[8];
                at = span.end;
                // Each field is UTF-8 when all of them together are and each ends at a
                // character's boundary.
                let own = match whole {
                    Some(whole) => whole.get(span),
                    None => std::str::from_utf8(&read.text[span]).ok(),
                };
                let Some(own) =
                    own.filter(|own| e.ends.iter().all(|&end| own.is_char_boundary(end)))
                else {
                    unreadable = Some((
                        e.seq,
                        "its stored fields cannot be read (a text column is not UTF-8)".to_string(),
                    ));
                    break;
                };
                if e.made {
                    batch.bytes.extend_from_slice(own.as_bytes());
                } else {
                    canonical.write(e, own, &mut batch.bytes);
                }
                batch.ends.push(batch.bytes.len());
            }
        }
        let (found, held) = check_links(&mut prev, &read.events, &batch.bytes, &batch.ends);
        batch.ends.truncate(held);
        batch
            .bytes
            .truncate(batch.ends.last().copied().unwrap_or_default());
        let found = found.or(unreadable);
        let sent = tree.send(batch).is_ok();
        read.text.clear();
        read.events.clear();
        let _ = read_spent.try_send(read);
        if found.is_some() || !sent {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            return found;
        }
    }
    None
}

/// The links of the first `ends.len()` events of `events`, whose canonical bytes end in
/// `bytes` at `ends`, checked in order from `prev` (the hash before the first), two at a
/// time (each against the hash stored in the event before it: they do not wait on each
/// other). The first that does not hold and how many held before it; `prev` is left at the
/// last that held.
fn check_links(
    prev: &mut [u8; 64],
    events: &[ReadEvent],
    bytes: &[u8],
    ends: &[usize],
) -> (Finding, usize) {
    let bad = |e: &ReadEvent| Some((e.seq, "its contents do not match its hash".to_string()));
    let mut start = 0;
    let mut i = 0;
    while i < ends.len() {
        let canonical = &bytes[start..ends[i]];
        if let Some(&next_end) = ends.get(i + 1) {
            let first = (&prev[..], canonical);
            let second = (&events[i].hash[..], &bytes[ends[i]..next_end]);
            let (a, b) = crate::sha256x2::pair(first, second);
            if !hex_matches(&a, &events[i].hash) {
                return (bad(&events[i]), i);
            }
            if !hex_matches(&b, &events[i + 1].hash) {
                *prev = events[i].hash;
                return (bad(&events[i + 1]), i + 1);
            }
            *prev = events[i + 1].hash;
            start = next_end;
            i += 2;
        } else {
            if !hex_matches(&chain_digest(&prev[..], canonical), &events[i].hash) {
                return (bad(&events[i]), i);
            }
            *prev = events[i].hash;
            start = ends[i];
            i += 1;
        }
    }
    (None, ends.len())
}

/// The last stage of `verify_against`: the Merkle tree's frontier from the events' leaves,
/// and each head checked at its size. The tree so far and the first problem found.
fn tree_stage(
    batches: std::sync::mpsc::Receiver<Batch>,
    spent: std::sync::mpsc::SyncSender<Batch>,
    heads: &[&Head],
    stop: &std::sync::atomic::AtomicBool,
) -> (merkle::Frontier, Finding) {
    let mut frontier = merkle::Frontier::default();
    let mut next_head = 0;
    let mut check_heads = |frontier: &merkle::Frontier| -> Finding {
        while let Some(h) = heads.get(next_head).filter(|h| h.size == frontier.size()) {
            if frontier.root() != h.root {
                return Some((
                    h.size as i64,
                    format!(
                        "the log's first {} events are not the ones {} signed for: they were rewritten, or the log forked",
                        h.size, h.name
                    ),
                ));
            }
            next_head += 1;
        }
        None
    };
    let mut found = check_heads(&frontier);
    'batches: for mut batch in batches.iter() {
        // The leaves two at a time (see `sha256x2`), pushed one by one.
        let mut start = 0;
        for ends in batch.ends.chunks(2) {
            let leaves = match *ends {
                [a, b] => {
                    let (x, y) = crate::sha256x2::pair(
                        (&[0], &batch.bytes[start..a]),
                        (&[0], &batch.bytes[a..b]),
                    );
                    [Some(x), Some(y)]
                }
                [a] => [Some(merkle::leaf_hash(&batch.bytes[start..a])), None],
                _ => unreachable!("chunks of one or two"),
            };
            start = *ends.last().expect("a chunk is not empty");
            for leaf in leaves.into_iter().flatten() {
                if found.is_some() {
                    break 'batches;
                }
                frontier.push(leaf);
                found = check_heads(&frontier);
            }
        }
        batch.bytes.clear();
        batch.ends.clear();
        let _ = spent.try_send(batch);
    }
    if found.is_some() {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    (frontier, found)
}

/// SHA-256(prev_hash ‖ canonical): an event's link in the chain.
fn chain_digest(prev_hash: &[u8], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(canonical);
    h.finalize().into()
}

/// Whether `stored` is `digest` in lowercase hex, as pim writes a hash (compared on the
/// stack: no string per event).
fn hex_matches(digest: &[u8; 32], stored: &[u8]) -> bool {
    /// Each byte's two lowercase hex digits.
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0u8; 2]; 256];
        let mut b = 0;
        while b < 256 {
            pairs[b] = [HEX[b >> 4], HEX[b & 15]];
            b += 1;
        }
        pairs
    };
    stored.len() == 64
        && digest
            .iter()
            .zip(stored.chunks_exact(2))
            .all(|(&b, digits)| PAIRS[usize::from(b)] == digits)
}

/// How many bytes of events met before their turn `read_log` keeps, reading as the rows lie,
/// before it reads the log again by number instead.
const EARLY: usize = 64 << 20;

/// What `read_log` found: the read's own result, the first problem the reader, the chain
/// and the tree found, the last hash that held, and the tree so far.
type LogRead = (
    Result<()>,
    Finding,
    [u8; 64],
    Finding,
    (merkle::Frontier, Finding),
);

/// The busy threads of `read_log`: this one, the chain's and the tree's.
const READ_THREADS: usize = 3;

/// Every event read and checked, for `verify_against`. `as_stored`: PostgreSQL's events
/// as they lie in the table; then also whether they were found out of order (the read
/// stopped there, and is to be made again by number).
fn read_log(conn: &Db, heads: &[&Head], as_stored: bool) -> (LogRead, bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Three stages, each a batch behind the one before, on two cores: this thread reads
    // the rows and checks numbers and links; the next makes each event's canonical bytes
    // and checks its hash; the last builds the Merkle tree and checks the heads.
    let stop = AtomicBool::new(false);
    let (send, chain_in) = std::sync::mpsc::sync_channel::<ReadBatch>(4);
    let (tree_out, tree_in) = std::sync::mpsc::sync_channel::<Batch>(4);
    // Spent batches go back to the stage before, which fills them again: fresh buffers
    // of a quarter of a megabyte would each be mapped and faulted in anew.
    let (read_spent, read_free) = std::sync::mpsc::sync_channel::<ReadBatch>(8);
    let (tree_spent, tree_free) = std::sync::mpsc::sync_channel::<Batch>(8);
    let mut disordered = false;
    let read = std::thread::scope(|s| {
        let chain = s.spawn(|| chain_stage(chain_in, read_spent, tree_out, tree_free, &stop));
        let tree = s.spawn(|| tree_stage(tree_in, tree_spent, heads, &stop));
        let mut expected_seq = 1;
        let mut prev = [0u8; 64];
        prev.copy_from_slice(GENESIS.as_bytes());
        let mut bad: Finding = None;
        let mut batch = ReadBatch {
            text: Vec::new(),
            events: Vec::with_capacity(BATCH),
        };
        // An event as read: its fields, or (PostgreSQL) the bytes hashed.
        enum Read<'a> {
            Fields(RawEvent<'a>),
            Made(MadeEvent<'a>),
        }
        let mut take = |read: std::result::Result<Read<'_>, (Option<i64>, String)>| {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let e = match read {
                Ok(e) => e,
                Err((seq, e)) => {
                    bad = Some((
                        seq.unwrap_or(expected_seq),
                        format!("its stored fields cannot be read ({e})"),
                    ));
                    return false;
                }
            };
            let (seq, prev_hash, hash) = match &e {
                Read::Fields(e) => (e.seq, e.prev_hash, e.hash),
                Read::Made(e) => (e.seq, e.prev_hash, e.hash),
            };
            bad = if seq != expected_seq {
                Some((
                    expected_seq,
                    format!("event {expected_seq} is missing (the next is {seq})"),
                ))
            } else if prev_hash != prev {
                Some((
                    seq,
                    "its prev_hash is not the hash of the event before it".to_string(),
                ))
            } else if hash.len() != prev.len() {
                // Not a hash pim writes: it cannot match the one made from the event.
                Some((seq, "its contents do not match its hash".to_string()))
            } else {
                None
            };
            if bad.is_some() {
                return false;
            }
            prev.copy_from_slice(hash);
            let base = batch.text.len();
            let mut ends = [0; 9];
            let event = match e {
                Read::Fields(e) => {
                    let texts = [
                        e.actor,
                        e.action,
                        e.principal.unwrap_or_default(),
                        e.role.unwrap_or_default(),
                        e.scope.unwrap_or_default(),
                        e.justification.unwrap_or_default(),
                        e.ticket.unwrap_or_default(),
                        e.result,
                        e.details,
                    ];
                    for (end, text) in ends.iter_mut().zip(texts) {
                        batch.text.extend_from_slice(text);
                        *end = batch.text.len() - base;
                    }
                    ReadEvent {
                        seq,
                        time: e.time,
                        request: e.request,
                        expires: e.expires,
                        ends,
                        made: false,
                        hash: prev,
                    }
                }
                Read::Made(e) => {
                    batch.text.extend_from_slice(e.canonical);
                    ends[8] = e.canonical.len();
                    ReadEvent {
                        seq,
                        time: 0,
                        request: None,
                        expires: None,
                        ends,
                        made: true,
                        hash: prev,
                    }
                }
            };
            batch.events.push(event);
            expected_seq += 1;
            if batch.events.len() == BATCH {
                // The next batch: a spent one, or one with room at once for as much as
                // this one took (growing it by doubling would copy its text again and again).
                let room = batch.text.len() + batch.text.len() / 8;
                let next = read_free.try_recv().unwrap_or_else(|_| ReadBatch {
                    text: Vec::with_capacity(room),
                    events: Vec::with_capacity(BATCH),
                });
                return send.send(std::mem::replace(&mut batch, next)).is_ok();
            }
            true
        };
        // Read as they lie, events come in order but for those PostgreSQL put where an
        // earlier page had room (after a vacuum, most new rows): each such is met before its
        // turn, and kept until its turn comes. One met after its turn, or more kept than
        // `EARLY`, or any kept at the end (one before it is missing) has the log read again
        // by number.
        let mut early = std::collections::BTreeMap::<i64, (Vec<u8>, Vec<u8>, Vec<u8>)>::new();
        let mut early_bytes = 0;
        let mut next = 1;
        let read = match conn.each_event_made(as_stored, |r| match r {
            Ok(e) if as_stored && e.seq != next => {
                if e.seq < next || early_bytes > EARLY {
                    disordered = true;
                    return false;
                }
                early_bytes += e.canonical.len() + e.prev_hash.len() + e.hash.len();
                let kept = (e.canonical.to_vec(), e.prev_hash.to_vec(), e.hash.to_vec());
                disordered |= early.insert(e.seq, kept).is_some();
                !disordered
            }
            r => {
                let mut going = take(r.map(Read::Made));
                next += 1;
                while going {
                    let Some((canonical, prev_hash, hash)) = early.remove(&next) else {
                        break;
                    };
                    early_bytes -= canonical.len() + prev_hash.len() + hash.len();
                    going = take(Ok(Read::Made(MadeEvent {
                        seq: next,
                        canonical: &canonical,
                        prev_hash: &prev_hash,
                        hash: &hash,
                    })));
                    next += 1;
                }
                going
            }
        }) {
            Some(read) => read,
            None => conn.each_event_raw(|r| take(r.map(Read::Fields))),
        };
        // Kept events whose turn never came, with nothing wrong found before them: one is
        // missing, which the read by number names.
        disordered |= !early.is_empty() && bad.is_none() && !stop.load(Ordering::Relaxed);
        if !batch.events.is_empty() {
            let _ = send.send(batch);
        }
        drop(send);
        let chained = chain.join().expect("the chain's thread does not panic");
        let treed = tree.join().expect("the tree's thread does not panic");
        (read, bad, prev, chained, treed)
    });
    (read, disordered)
}

/// `verify`, and that the log extends every head in `heads` (signed checkpoints): the root
/// of its first `size` events, recomputed from the events themselves (no stored node is
/// trusted), must be the head's root. A log cut short, rewritten or forked anywhere a head
/// covers is found, however consistent its own chain.
pub fn verify_against(conn: &Db, heads: &[Head]) -> Result<Verification> {
    let mut heads: Vec<&Head> = heads.iter().collect();
    heads.sort_by_key(|h| h.size);
    // One snapshot for the events and the stored tree: a writer committing between the two
    // reads would look like a cut (more leaves than events).
    let _snapshot = if conn.in_transaction() {
        None
    } else {
        Some(conn.durable_read()?)
    };
    // A server on this machine sends the events as fast as its session gets a core: where
    // the reader's three threads would take every core, one is left to it (`cores`).
    let leaving = conn
        .server_beside()
        .then(|| crate::cores::leave_one(READ_THREADS));
    // PostgreSQL's events are read first as they lie in the table (the server's cheapest
    // read: its rows are appended in order, and are met in order unless space freed by a
    // rolled-back write was used again), then by number if they were not in order.
    let (mut found, disordered) = read_log(conn, &heads, true);
    if disordered {
        found = read_log(conn, &heads, false).0;
    }
    drop(leaving);
    let (read, read_bad, prev, chain_bad, (frontier, tree_bad)) = found;
    read?;
    // The first problem in the log's order, whichever thread found it.
    let mut bad = [read_bad, chain_bad, tree_bad]
        .into_iter()
        .flatten()
        .min_by_key(|(seq, _)| *seq);
    // The events that held: those before the first problem in the log, else all read.
    let held = match &bad {
        Some((seq, _)) => seq - 1,
        None => frontier.size() as i64,
    };
    if bad.is_none() {
        if let Some(h) = heads.last().filter(|h| h.size > frontier.size()) {
            bad = Some((
                frontier.size() as i64 + 1,
                format!(
                    "the log ends at event {} but {} signed for {} events: the newest were cut off",
                    frontier.size(),
                    h.name,
                    h.size
                ),
            ));
        }
    }
    let stored_leaves = conn.merkle_leaves()?;
    if bad.is_none() && stored_leaves > frontier.size() {
        // Leaves of events that are gone: the log was cut short after the tree grew.
        bad = Some((
            frontier.size() as i64 + 1,
            format!(
                "the Merkle tree has {stored_leaves} leaves but the log only {} events: the newest were cut off",
                frontier.size()
            ),
        ));
    }
    if bad.is_none() && stored_leaves == frontier.size() && frontier.size() > 0 {
        // The stored tree (which proofs are made from) must be the log's.
        if tree_root(conn, frontier.size())? != frontier.root() {
            bad = Some((
                frontier.size() as i64,
                "the stored Merkle tree does not match the events".to_string(),
            ));
        }
    }
    let checked = heads.len();
    Ok(match bad {
        Some((seq, reason)) => Verification {
            ok: false,
            events: held,
            head: None,
            root: None,
            checkpoints: checked,
            bad_seq: Some(seq),
            reason: Some(reason),
        },
        None => Verification {
            ok: true,
            events: held,
            head: Some(String::from_utf8_lossy(&prev).into_owned()),
            root: Some(hex::encode(frontier.root())),
            checkpoints: checked,
            bad_seq: None,
            reason: None,
        },
    })
}

/// Prefix with `'` a cell that a spreadsheet could run as a formula: one that starts with
/// `=`, `+`, `-`, `@` (or their fullwidth forms), after any blanks and invisible characters,
/// or with a tab or carriage return; and one that starts with `'` itself, so that a reader
/// gets every cell back by dropping one leading `'` where there is one (a written `'=1+1`
/// and a written `=1+1` stay apart).
pub fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    let lead = cell
        .chars()
        .find(|&c| !(c.is_whitespace() || crate::text::unsafe_char(c)) || c == '\t' || c == '\r');
    let formula = matches!(
        lead,
        Some(
            '=' | '+'
                | '-'
                | '@'
                | '\t'
                | '\r'
                // fullwidth and small forms, which a spreadsheet may take for the ASCII ones
                | '\u{ff1d}'
                | '\u{ff0b}'
                | '\u{ff0d}'
                | '\u{ff20}'
                | '\u{fe66}'
                | '\u{fe62}'
                | '\u{fe63}'
                | '\u{fe6b}'
        )
    );
    if formula || cell.starts_with('\'') {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

/// Replay the log and compare it with the state tables: every user, assignment (with its end
/// and its removal), activation request and approver's decision must be explained by the
/// events that made it, and say what they say. Returns what does not hold, named (empty: the
/// state is the log's).
pub fn verify_state(conn: &Db) -> Result<Vec<String>> {
    use std::collections::{HashMap, HashSet};
    #[derive(Default)]
    struct Made {
        user: String,
        role: String,
        scope: String,
        kind: String,
        end: Option<String>,
        removed: bool,
        start: String,
    }
    let mut users: HashSet<String> = HashSet::new();
    let mut disabled: HashSet<String> = HashSet::new();
    // Service tokens' hashes, where the events carry them (not before this pim).
    let mut tokens: HashMap<String, Option<String>> = HashMap::new();
    let mut assignments: HashMap<i64, Made> = HashMap::new();
    let mut requests: HashMap<i64, (String, String, String)> = HashMap::new();
    // Where each request stands by its events: (class, end, an applied extension).
    let mut standing: HashMap<i64, (&'static str, Option<String>, bool)> = HashMap::new();
    // A request's start as its events set it (without approval: the start asked for).
    let mut starts: HashMap<i64, String> = HashMap::new();
    // The window each request asked for (its start and end, as unix times), whatever
    // approval it waits for: no start may come before it, and no activation run longer,
    // unless its end was its eligibility's (which may have been made longer since; the
    // length it asked for is then not in the log).
    let mut asked: HashMap<i64, (i64, i64, bool)> = HashMap::new();
    // The length each asked for before any cap, where its event says (pims from stop 34 on),
    // and the eligibility it rests on.
    let mut asked_length: HashMap<i64, i64> = HashMap::new();
    let mut rests_on: HashMap<i64, i64> = HashMap::new();
    // Who approved each request, by the log (the decisions table is the database's word).
    let mut approvers: HashMap<i64, HashSet<String>> = HashMap::new();
    // Requests that an applied extension made longer (their length is the extension's).
    let mut extended: HashSet<i64> = HashSet::new();
    // Extensions: the activation each asked to extend, and for how long (from its request).
    let mut extension_of: HashMap<i64, i64> = HashMap::new();
    let mut extension_asked: HashMap<i64, i64> = HashMap::new();
    // Requests that wait for approval, and when their approvals first made the quorum (an
    // `activation.approve` whose `approvals` reached its `needed`).
    let mut needs_approval: HashSet<i64> = HashSet::new();
    let mut quorum: HashMap<i64, i64> = HashMap::new();
    // Requests whose start the log records.
    let mut started: HashSet<i64> = HashSet::new();
    let unix = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.timestamp())
    };
    // What the log says against itself (before any table is read).
    let mut findings = Vec::new();
    // How a finding names request `id`, by one of its events.
    let request_of = |id: i64, e: &StoredEvent| {
        format!(
            "request {id} ({} {} at {})",
            e.principal.as_deref().unwrap_or_default(),
            e.role.as_deref().unwrap_or_default(),
            e.scope.as_deref().unwrap_or_default()
        )
    };
    let mut decisions: HashSet<(i64, String, String)> = HashSet::new();
    let mut reviews: HashSet<i64> = HashSet::new();
    for_each(conn, &Filter::default(), None, |e| {
        if e.result != "ok" {
            return Ok(());
        }
        let details: serde_json::Value = serde_json::from_str(&e.details).unwrap_or_default();
        let assignment = details["assignment"].as_i64();
        let principal = e.principal.clone().unwrap_or_default();
        match e.action.as_str() {
            "user.add" => {
                if details["kind"].as_str() == Some("service") {
                    let hash = details["token_sha256"].as_str().map(str::to_string);
                    tokens.insert(principal.clone(), hash);
                }
                users.insert(principal);
            }
            "user.token.rotate" => {
                let hash = details["token_sha256"].as_str().map(str::to_string);
                tokens.insert(principal, hash);
            }
            "user.disable" => {
                disabled.insert(principal);
            }
            "user.enable" => {
                disabled.remove(&principal);
            }
            "assignment.add" => {
                if let Some(id) = assignment {
                    assignments.insert(
                        id,
                        Made {
                            user: principal,
                            role: e.role.clone().unwrap_or_default(),
                            scope: e.scope.clone().unwrap_or_default(),
                            kind: details["type"].as_str().unwrap_or_default().to_string(),
                            end: e.expires.clone(),
                            removed: false,
                            start: details["start"]
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| e.time.clone()),
                        },
                    );
                }
            }
            "assignment.change" => {
                if let Some(a) = assignment.and_then(|id| assignments.get_mut(&id)) {
                    a.end = e.expires.clone();
                }
            }
            "assignment.remove" => {
                if let Some(a) = assignment.and_then(|id| assignments.get_mut(&id)) {
                    a.removed = true;
                }
            }
            "activation.request" => {
                if let Some(id) = e.request {
                    requests.entry(id).or_insert((
                        principal,
                        e.role.clone().unwrap_or_default(),
                        e.scope.clone().unwrap_or_default(),
                    ));
                    let start = details["start"].as_str().map(str::to_string);
                    if details["approval"].as_bool() == Some(true) {
                        needs_approval.insert(id);
                    }
                    if let Some(length) = details["duration_asked"].as_i64() {
                        asked_length.insert(id, length);
                    }
                    if let Some(eligibility) = details["eligibility"].as_i64() {
                        rests_on.insert(id, eligibility);
                    }
                    if let Some(original) = details["extends"].as_i64() {
                        extension_of.insert(id, original);
                        if let (Some(at), Some(to)) =
                            (unix(&e.time), e.expires.as_deref().and_then(unix))
                        {
                            extension_asked.insert(id, to - at);
                        }
                    }
                    let class = if details["approval"].as_bool() == Some(true) {
                        "pending"
                    } else if start.as_deref().is_some_and(|s| *s > *e.time) {
                        "scheduled"
                    } else {
                        "active"
                    };
                    if let (Some(from), Some(to)) = (
                        start.as_deref().and_then(unix),
                        e.expires.as_deref().and_then(unix),
                    ) {
                        let capped = details["capped_by_eligibility"].as_bool() == Some(true);
                        asked.insert(id, (from, to, capped));
                    }
                    if let (Some(s), "active" | "scheduled") = (start, class) {
                        starts.insert(id, s);
                    }
                    standing.insert(id, (class, e.expires.clone(), false));
                }
            }
            "activation.start" => {
                if let Some(id) = e.request {
                    started.insert(id);
                    if needs_approval.contains(&id) && !quorum.contains_key(&id) {
                        findings.push(format!(
                            "{} started without the approvals it needed",
                            request_of(id, &e)
                        ));
                    }
                    // Started no earlier than asked, for no longer than asked (an approval
                    // after the start asked for starts it then, for the time asked).
                    let ran = unix(&e.time).zip(e.expires.as_deref().and_then(unix));
                    if let (Some(&(from, to, capped)), Some((at, until))) = (asked.get(&id), ran) {
                        let longest = asked_length
                            .get(&id)
                            .copied()
                            .or((!capped).then_some(to - from));
                        let longer = !extended.contains(&id)
                            && longest.is_some_and(|longest| until - at > longest);
                        if at < from || longer {
                            findings.push(format!(
                                "{} started {} to end {}, but it asked for {} to {}",
                                request_of(id, &e),
                                e.time,
                                e.expires.as_deref().unwrap_or_default(),
                                rfc3339(from_unix(from)),
                                rfc3339(from_unix(to)),
                            ));
                        }
                    }
                }
                if let Some(s) = e.request.and_then(|id| standing.get_mut(&id)) {
                    *s = ("active", e.expires.clone(), false);
                }
            }
            "activation.shorten" => {
                if let Some(s) = e.request.and_then(|id| standing.get_mut(&id)) {
                    s.1 = e.expires.clone();
                }
            }
            "activation.extend" => {
                let target = details["extends"].as_i64();
                if let Some(id) = e.request {
                    let what = request_of(id, &e);
                    let asked_for = extension_of.get(&id).copied();
                    if target != asked_for {
                        findings.push(format!(
                            "{what} extended request {} but asked to extend request {}",
                            target.map_or("none".into(), |t| t.to_string()),
                            asked_for.map_or("none".into(), |t| t.to_string())
                        ));
                    }
                    if needs_approval.contains(&id) && !quorum.contains_key(&id) {
                        findings.push(format!(
                            "{what} was applied without the approvals it needed"
                        ));
                    }
                    let ran = unix(&e.time).zip(e.expires.as_deref().and_then(unix));
                    if let (Some(&length), Some((at, until))) = (extension_asked.get(&id), ran) {
                        if until - at > length {
                            findings.push(format!(
                                "{what} extended to {} from {}, longer than it asked for",
                                e.expires.as_deref().unwrap_or_default(),
                                e.time
                            ));
                        }
                    }
                }
                if let Some(t) = target {
                    extended.insert(t);
                }
                if let Some(s) = e.request.and_then(|id| standing.get_mut(&id)) {
                    *s = ("expired", None, true);
                }
                if let Some(s) = details["extends"]
                    .as_i64()
                    .and_then(|id| standing.get_mut(&id))
                {
                    s.1 = e.expires.clone();
                }
            }
            "activation.deny"
            | "activation.timeout"
            | "activation.cancel"
            | "activation.revoke"
            | "activation.deactivate"
            | "activation.expire" => {
                let class = match e.action.as_str() {
                    "activation.deny" => "denied",
                    "activation.timeout" => "timed_out",
                    "activation.cancel" => "canceled",
                    "activation.revoke" => "revoked",
                    "activation.deactivate" => "deactivated",
                    _ => "expired",
                };
                if let Some(s) = e.request.and_then(|id| standing.get_mut(&id)) {
                    s.0 = class;
                }
                if let (Some(id), "activation.deny") = (e.request, e.action.as_str()) {
                    decisions.insert((id, e.actor.clone(), "deny".to_string()));
                }
            }
            "activation.approve" => {
                if let Some(id) = e.request {
                    decisions.insert((id, e.actor.clone(), "approve".to_string()));
                    // The approvals that count are the approvers on record: an approval that
                    // counts more (decision rows put in by hand) is named, and counts as many.
                    let by = approvers.entry(id).or_default();
                    by.insert(e.actor.clone());
                    let seen = by.len() as i64;
                    if let Some(claimed) = details["approvals"].as_i64().filter(|&c| c > seen) {
                        findings.push(format!(
                            "{} was approved by {} as approval {claimed}, but the log holds {seen}",
                            request_of(id, &e),
                            e.actor
                        ));
                    }
                    // (an approval of a pim before these details made the quorum)
                    let met = match (details["approvals"].as_i64(), details["needed"].as_i64()) {
                        (Some(approvals), Some(needed)) => approvals.min(seen) >= needed,
                        _ => true,
                    };
                    if met {
                        quorum
                            .entry(id)
                            .or_insert_with(|| unix(&e.time).unwrap_or_default());
                    }
                }
            }
            "review.create" => {
                if let Some(id) = details["review"].as_i64() {
                    reviews.insert(id);
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    for u in conn.all_users()? {
        if !users.contains(&u.name) {
            findings.push(format!("user {} was made by no event", u.name));
        }
        let stored = conn.token_state(&u.name)?.and_then(|t| t.hash);
        match tokens.get(&u.name) {
            Some(Some(hash)) if stored.as_deref() != Some(hash.as_str()) => findings.push(format!(
                "user {}'s service token is not the one the events made",
                u.name
            )),
            None if stored.is_some() => {
                findings.push(format!("user {} has a service token no event made", u.name))
            }
            _ => {}
        }
        if u.disabled != disabled.contains(&u.name) {
            findings.push(format!(
                "user {} is {} but the events say {}",
                u.name,
                if u.disabled { "disabled" } else { "enabled" },
                if u.disabled { "enabled" } else { "disabled" }
            ));
        }
    }
    let mut seen = HashSet::new();
    for a in conn.assignment_rows()? {
        seen.insert(a.id);
        let what = format!(
            "assignment {} ({} {} {} at {})",
            a.id, a.user, a.kind, a.role, a.scope
        );
        let Some(m) = assignments.get(&a.id) else {
            findings.push(format!("{what} was made by no event"));
            continue;
        };
        if (
            m.user.as_str(),
            m.role.as_str(),
            m.scope.as_str(),
            m.kind.as_str(),
        ) != (
            a.user.as_str(),
            a.role.as_str(),
            a.scope.as_str(),
            a.kind.as_str(),
        ) {
            findings.push(format!(
                "{what} differs from its event ({} {} {} at {})",
                m.user, m.kind, m.role, m.scope
            ));
        }
        let start = rfc3339(from_unix(a.start_at));
        if m.start != start {
            findings.push(format!(
                "{what} starts {start} but its events say {}",
                m.start
            ));
        }
        let end = a.end_at.map(|t| rfc3339(from_unix(t)));
        if m.end != end {
            findings.push(format!(
                "{what} ends {} but its events say {}",
                end.as_deref().unwrap_or("never"),
                m.end.as_deref().unwrap_or("never")
            ));
        }
        if m.removed != a.removed_at.is_some() {
            findings.push(format!(
                "{what} is {} but its events say {}",
                if a.removed_at.is_some() {
                    "removed"
                } else {
                    "in place"
                },
                if m.removed { "removed" } else { "in place" }
            ));
        }
    }
    let mut gone: Vec<i64> = assignments
        .keys()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    gone.sort();
    for id in gone {
        findings.push(format!(
            "assignment {id} of the log is missing from the state"
        ));
    }
    let mut kept: HashSet<i64> = HashSet::new();
    for (id, user, role, scope, status, end, start, extends, eligibility) in conn.request_rows()? {
        kept.insert(id);
        if let Some(&named) = rests_on.get(&id).filter(|&&n| Some(n) != eligibility) {
            findings.push(format!(
                "request {id} ({user} {role} at {scope}) rests on eligibility {} but its events say {named}",
                eligibility.map_or("none".into(), |e| e.to_string())
            ));
        }
        if requests.contains_key(&id) && extends != extension_of.get(&id).copied() {
            findings.push(format!(
                "request {id} ({user} {role} at {scope}) extends request {} but its events say {}",
                extends.map_or("none".into(), |t| t.to_string()),
                extension_of
                    .get(&id)
                    .map_or("none".into(), |t| t.to_string())
            ));
        }
        if let Some((class, event_end, applied)) = standing.get(&id) {
            let stored = status.as_str();
            // Approved, by as many as it needed, before the start it asked for: scheduled,
            // recorded by the approval alone.
            let scheduled_by_approval = stored == "scheduled"
                && *class == "pending"
                && quorum
                    .get(&id)
                    .is_some_and(|&at| asked.get(&id).is_none_or(|&(from, _, _)| from > at));
            if let Some(s) = starts.get(&id).filter(|_| !applied) {
                if *s != rfc3339(from_unix(start)) {
                    findings.push(format!(
                        "request {id} ({user} {role} at {scope}) starts {} but its events say {s}",
                        rfc3339(from_unix(start))
                    ));
                }
            }
            // Scheduled by its approval and ended before any sweep recorded its start: the
            // log has no event of the window its approval gave (capped then), only the ask.
            let approved_unstarted = *class == "expired"
                && stored == "expired"
                && needs_approval.contains(&id)
                && !started.contains(&id)
                && !applied;
            if approved_unstarted && !quorum.contains_key(&id) {
                findings.push(format!(
                    "request {id} ({user} {role} at {scope}) ran without the approvals it needed"
                ));
            }
            // Waiting, or scheduled by its approval (no event yet): the window asked for, or
            // (scheduled, or so ended) no longer than asked from the same start.
            if let (Some(&(from, to, capped)), true) = (
                asked.get(&id),
                matches!((stored, *class), ("pending" | "scheduled", "pending"))
                    || approved_unstarted,
            ) {
                let moved = if stored == "pending" {
                    start != from || end != to
                } else {
                    let longest = asked_length
                        .get(&id)
                        .copied()
                        .or((!capped).then_some(to - from));
                    start != from
                        || (!extended.contains(&id)
                            && longest.is_some_and(|longest| end - start > longest))
                };
                if moved {
                    findings.push(format!(
                        "request {id} ({user} {role} at {scope}) is {status} for {} to {} but it asked for {} to {}",
                        rfc3339(from_unix(start)),
                        rfc3339(from_unix(end)),
                        rfc3339(from_unix(from)),
                        rfc3339(from_unix(to)),
                    ));
                }
            }
            if stored != *class && !scheduled_by_approval {
                findings.push(format!(
                    "request {id} ({user} {role} at {scope}) is {status} but its events say {class}"
                ));
            } else if !applied
                && !approved_unstarted
                && matches!(*class, "active" | "scheduled" | "expired")
                && event_end
                    .as_deref()
                    .is_some_and(|t| *t != rfc3339(from_unix(end)))
            {
                findings.push(format!(
                    "request {id} ({user} {role} at {scope}) ends {} but its events say {}",
                    rfc3339(from_unix(end)),
                    event_end.as_deref().unwrap_or("never")
                ));
            }
        }
        match requests.get(&id) {
            None => findings.push(format!(
                "request {id} ({user} {role} at {scope}) was made by no event"
            )),
            Some(m)
                if (m.0.as_str(), m.1.as_str(), m.2.as_str())
                    != (user.as_str(), role.as_str(), scope.as_str()) =>
            {
                findings.push(format!(
                    "request {id} ({user} {role} at {scope}) differs from its event ({} {} at {})",
                    m.0, m.1, m.2
                ))
            }
            Some(_) => {}
        }
    }
    let mut gone: Vec<i64> = requests
        .keys()
        .filter(|id| !kept.contains(id))
        .copied()
        .collect();
    gone.sort();
    for id in gone {
        findings.push(format!("request {id} of the log is missing from the state"));
    }
    for id in conn.review_ids()? {
        if !reviews.contains(&id) {
            findings.push(format!("review {id} was made by no event"));
        }
    }
    let mut rows = HashSet::new();
    for (id, approver, decision) in conn.decision_rows()? {
        if !decisions.contains(&(id, approver.clone(), decision.clone())) {
            findings.push(format!(
                "the decision {decision} by {approver} on request {id} was made by no event"
            ));
        }
        rows.insert((id, approver, decision));
    }
    let mut gone: Vec<_> = decisions.difference(&rows).collect();
    gone.sort();
    for (id, approver, decision) in gone {
        findings.push(format!(
            "the decision {decision} by {approver} on request {id} of the log is missing from the state"
        ));
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params;
    use crate::store;

    fn t(s: i64) -> DateTime<Utc> {
        from_unix(1_800_000_000 + s)
    }

    /// The export's borrowed events are the stored ones, field by field (absent and empty
    /// kept apart), across chunks, filtered; a field that is not UTF-8 is an error.
    #[test]
    fn borrowed_events_are_the_stored_ones() {
        let conn = store::in_memory().unwrap();
        let tx = conn.write().unwrap();
        for i in 0..5_000i64 {
            let mut e = Event::new(if i % 3 == 0 { "alice" } else { "bob" }, "assignment.add")
                .detail("i", i)
                .detail("quote", "say \"hi\"");
            if i % 2 == 0 {
                e = e.principal(&format!("u{i}")).role("db-admin").scope("/");
            }
            if i % 5 == 0 {
                e = e
                    .role("")
                    .justification(Some("INC-1, \"x\""))
                    .ticket(Some("T"));
            }
            if i % 7 == 0 {
                e = e.request(i).expires(Some(1_700_000_000 + i * 7_919));
            }
            // Several events a second, and seconds across days.
            append(&tx, t(i / 3 * 40_000), e).unwrap();
        }
        tx.commit().unwrap();
        for filter in [
            Filter::default(),
            Filter {
                actor: Some("bob".into()),
                ..Filter::default()
            },
        ] {
            let mut stored = Vec::new();
            for_each(&conn, &filter, None, |e| {
                stored.push(e);
                Ok(())
            })
            .unwrap();
            let mut i = 0;
            for_each_ref(&conn, &filter, |e| {
                assert_eq!(*e, stored[i].borrowed(), "event {}", stored[i].seq);
                i += 1;
                Ok(())
            })
            .unwrap();
            assert_eq!(i, stored.len());
            assert!(i > 3_000);
        }
        conn.execute_batch(
            "DROP TRIGGER audit_events_no_update; \
             UPDATE audit_events SET details = CAST(x'7b22ff' AS TEXT) WHERE seq = 4500",
        )
        .unwrap();
        let mut seen = 0;
        let read = for_each_ref(&conn, &Filter::default(), |_| {
            seen += 1;
            Ok(())
        });
        assert!(read.unwrap_err().to_string().contains("not UTF-8"));
        assert_eq!(
            seen, 4_096,
            "the chunk before it was handed on, nothing after"
        );
    }

    fn sample(conn: &Db, n: i64) {
        for i in 0..n {
            append(
                conn,
                t(i),
                Event::new("alice", "user.add")
                    .principal(&format!("u{i}"))
                    .detail("i", i),
            )
            .unwrap();
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_verify_beside_its_server_leaves_it_a_cpu_and_gives_it_back() {
        use crate::cores::tests::{cpus, two_cpus, LEFT};
        // On a thread of its own, whose CPUs no other test changes, held to two of them:
        // verify's three threads would fill them.
        std::thread::spawn(|| {
            let conn = store::test_db();
            // The test server is this machine's unless `PIM_TEST_POSTGRES` names another.
            if conn.backend() == store::Backend::Sqlite {
                assert!(!conn.server_beside());
            }
            sample(&conn, 2 * BATCH as i64 + 5);
            let two = two_cpus();
            LEFT.set(None);
            let v = verify(&conn).unwrap();
            assert!(v.ok, "{v:?}");
            assert_eq!(v.events, 2 * BATCH as i64 + 5);
            // One CPU was left to the server while the events were read, and given back.
            let left = LEFT.get();
            if conn.server_beside() && two.len() == 2 {
                assert!(left.is_some_and(|cpu| two.contains(&cpu)), "{left:?}");
            } else {
                assert_eq!(left, None);
            }
            assert_eq!(cpus(), two);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn events_chain_from_genesis_without_gaps() {
        let conn = store::in_memory().unwrap();
        sample(&conn, 3);
        let v = verify(&conn).unwrap();
        assert!(v.ok);
        assert_eq!(v.events, 3);
        let mut seen = Vec::new();
        for_each(&conn, &Filter::default(), None, |e| {
            seen.push(e);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen[0].prev_hash, GENESIS);
        assert_eq!(seen[1].prev_hash, seen[0].hash);
        assert_eq!(
            seen.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(v.head.unwrap(), seen[2].hash);
    }

    #[test]
    fn a_single_changed_byte_in_any_column_is_found() {
        let columns = [
            "time",
            "actor",
            "action",
            "principal",
            "role",
            "scope",
            "request",
            "justification",
            "ticket",
            "expires",
            "result",
            "details",
            "prev_hash",
            "hash",
        ];
        for column in columns {
            let conn = store::in_memory().unwrap();
            sample(&conn, 3);
            conn.execute_batch("DROP TRIGGER audit_events_no_update")
                .unwrap();
            let sql = match column {
                "time" => "UPDATE audit_events SET time = time + 1 WHERE seq = 2".to_string(),
                "request" | "expires" => {
                    format!("UPDATE audit_events SET {column} = 7 WHERE seq = 2")
                }
                _ => format!(
                    "UPDATE audit_events SET {column} = \
                     substr(coalesce({column}, ''), 1, 0) || 'X' || substr(coalesce({column}, ''), 2) WHERE seq = 2"
                ),
            };
            conn.execute_batch(&sql).unwrap();
            let v = verify(&conn).unwrap();
            assert!(!v.ok, "{column}");
            assert!(
                v.bad_seq == Some(2) || v.bad_seq == Some(3),
                "{column}: {v:?}"
            );
        }
    }

    #[test]
    fn a_deleted_event_is_found() {
        let conn = store::in_memory().unwrap();
        sample(&conn, 3);
        conn.execute_batch(
            "DROP TRIGGER audit_events_no_delete; DELETE FROM audit_events WHERE seq = 2",
        )
        .unwrap();
        let v = verify(&conn).unwrap();
        assert_eq!(v.bad_seq, Some(2));
        assert!(v.reason.unwrap().contains("missing"));
    }

    #[test]
    fn the_log_refuses_updates_and_deletes() {
        let conn = store::in_memory().unwrap();
        sample(&conn, 1);
        assert!(conn
            .execute("UPDATE audit_events SET actor = 'x'", params![])
            .is_err());
        assert!(conn.execute("DELETE FROM audit_events", params![]).is_err());
    }

    #[test]
    fn filters_select_events() {
        let conn = store::in_memory().unwrap();
        sample(&conn, 5);
        append(&conn, t(10), Event::new("bob", "mfa.fail").principal("bob")).unwrap();
        let count = |f: Filter| {
            let mut n = 0;
            for_each(&conn, &f, None, |_| {
                n += 1;
                Ok(())
            })
            .unwrap();
            n
        };
        assert_eq!(
            count(Filter {
                actor: Some("bob".into()),
                ..Filter::default()
            }),
            1
        );
        assert_eq!(
            count(Filter {
                action: Some("user.*".into()),
                ..Filter::default()
            }),
            5
        );
        assert_eq!(
            count(Filter {
                since: Some(t(3)),
                ..Filter::default()
            }),
            3
        );
        assert_eq!(
            count(Filter {
                until: Some(t(3)),
                ..Filter::default()
            }),
            3
        );
        assert_eq!(
            count(Filter {
                user: Some("u1".into()),
                ..Filter::default()
            }),
            1
        );
        assert_eq!(
            count(Filter {
                involving: Some("bob".into()),
                ..Filter::default()
            }),
            1
        );
    }

    #[test]
    fn streaming_crosses_chunks_in_order_and_filtered() {
        let conn = store::in_memory().unwrap();
        sample(&conn, 10_000);
        let mut seqs = Vec::new();
        for_each(&conn, &Filter::default(), None, |e| {
            seqs.push(e.seq);
            Ok(())
        })
        .unwrap();
        assert_eq!(seqs, (1..=10_000).collect::<Vec<_>>());
        let mut n = 0;
        let f = Filter {
            since: Some(t(5_000)),
            ..Filter::default()
        };
        for_each(&conn, &f, None, |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 5_000);
    }

    #[test]
    fn formula_cells_are_defused() {
        assert_eq!(spreadsheet_safe("=1+1"), "'=1+1");
        assert_eq!(spreadsheet_safe("-x"), "'-x");
        assert_eq!(spreadsheet_safe("@SUM"), "'@SUM");
        assert_eq!(spreadsheet_safe("\tx"), "'\tx");
        assert_eq!(spreadsheet_safe("plain"), "plain");
        // After blanks and invisible characters, in fullwidth forms, and a leading quote
        // (so that dropping one leading quote gives every cell back).
        for lead in [
            " =1+1",
            "\u{feff}=1+1",
            "\u{200b}+1",
            "\u{3000}-1",
            "\u{ff1d}1+1",
            "\u{ff20}SUM",
            "\u{fe66}1+1",
            "\u{fe62}1",
            "\u{fe63}1",
            "\u{fe6b}SUM",
            "'=1+1",
            "'",
        ] {
            assert_eq!(spreadsheet_safe(lead), format!("'{lead}"), "{lead:?}");
        }
        for plain in ["a=b", "1-2", "x ", "", "\u{00e9}=", "CHG-1"] {
            assert_eq!(spreadsheet_safe(plain), plain, "{plain:?}");
        }
        assert_ne!(spreadsheet_safe("=1+1"), spreadsheet_safe("'=1+1"));
    }

    /// `verify` reads, makes canonical bytes and hashes in stages a batch apart: a problem
    /// past the first batches is found at its own event, whichever stage finds it, and a
    /// head inside the log is still checked when the chain breaks after it.
    #[test]
    fn problems_are_found_at_their_event_across_batches() {
        // An odd number in the last batch: its last event is hashed alone, the others two
        // by two (`sha256x2`).
        let n = 3 * BATCH as i64 + 11;
        let tampered = |sql: &str| {
            let conn = store::in_memory().unwrap();
            sample(&conn, n);
            conn.execute_batch(
                "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete",
            )
            .unwrap();
            conn.execute_batch(sql).unwrap();
            conn
        };
        // The first of a pair, the second of one, a batch's last and the next's first (its
        // link made from the batch before), and the log's last event, alone.
        for seq in [
            BATCH as i64 + 7,
            BATCH as i64 + 8,
            BATCH as i64,
            BATCH as i64 + 1,
            n,
        ] {
            problems_are_found_at(&tampered, seq, seq == n);
        }
        let seq = BATCH as i64 + 7;
        // A link that does not hold just before an event that cannot be read, and the
        // other way round: the first in the log is named, whichever its place in a pair.
        for (first, second) in [
            ("actor = 'mallory'", "actor = CAST(x'ff' AS TEXT)"),
            ("actor = CAST(x'ff' AS TEXT)", "actor = 'mallory'"),
        ] {
            for at in [seq, seq + 1] {
                let v = verify(&tampered(&format!(
                    "UPDATE audit_events SET {first} WHERE seq = {at}; \
                     UPDATE audit_events SET {second} WHERE seq = {}",
                    at + 1
                )))
                .unwrap();
                assert_eq!(v.bad_seq, Some(at), "{first} at {at}: {v:?}");
            }
        }
        // A head at an odd size (the first of a pair of leaves) that the log does not match.
        let conn = store::in_memory().unwrap();
        sample(&conn, n);
        let odd = Head {
            size: BATCH as u64 + 1,
            root: [7; 32],
            name: "cp".into(),
        };
        let v = verify_against(&conn, &[odd]).unwrap();
        assert_eq!(v.bad_seq, Some(BATCH as i64 + 1), "{v:?}");
        // A head over the first BATCH events that the log does not match, and a broken
        // chain after it: the head's finding comes first.
        let conn = tampered(&format!(
            "UPDATE audit_events SET actor = 'x' WHERE seq = {seq}"
        ));
        let head = Head {
            size: BATCH as u64,
            root: [7; 32],
            name: "cp".into(),
        };
        let v = verify_against(&conn, &[head]).unwrap();
        assert_eq!(v.bad_seq, Some(BATCH as i64), "{v:?}");
        assert!(v.reason.unwrap().contains("cp signed for"));
        // And an untouched log holds, its head the last event's hash.
        let conn = store::in_memory().unwrap();
        sample(&conn, n);
        let v = verify(&conn).unwrap();
        assert!(v.ok && v.events == n, "{v:?}");
    }

    /// Each kind of change to event `seq` is found there (`last`: the log's last event, whose
    /// deletion is a cut, found otherwise).
    fn problems_are_found_at(tampered: &dyn Fn(&str) -> Db, seq: i64, last: bool) {
        for (sql, reason) in [
            (
                format!("UPDATE audit_events SET actor = 'mallory' WHERE seq = {seq}"),
                "do not match its hash",
            ),
            (
                format!("UPDATE audit_events SET details = '{{\"a\":\"\\n\"}}' WHERE seq = {seq}"),
                "do not match its hash",
            ),
            (
                format!("UPDATE audit_events SET prev_hash = hash WHERE seq = {seq}"),
                "prev_hash",
            ),
            (
                format!("UPDATE audit_events SET hash = 'short' WHERE seq = {seq}"),
                "do not match its hash",
            ),
            (
                format!("DELETE FROM audit_events WHERE seq = {seq}"),
                "missing",
            ),
            (
                format!("UPDATE audit_events SET actor = CAST(x'ff' AS TEXT) WHERE seq = {seq}"),
                "cannot be read",
            ),
            (
                format!("UPDATE audit_events SET role = x'41' WHERE seq = {seq}"),
                "cannot be read",
            ),
        ] {
            if last && sql.starts_with("DELETE") {
                continue;
            }
            let v = verify(&tampered(&sql)).unwrap();
            assert!(!v.ok, "{sql}");
            assert_eq!(v.bad_seq, Some(seq), "{sql}: {v:?}");
            assert_eq!(v.events, seq - 1, "{sql}");
            assert!(
                v.reason.as_deref().unwrap().contains(reason),
                "{sql}: {v:?}"
            );
        }
    }

    /// Appends inside one write transaction build on the log's end as the transaction left
    /// it (not asked of the store again): after a rollback to a savepoint, or a row written
    /// by other means, it is read again; the chain and the tree hold either way.
    #[test]
    fn appends_in_one_transaction_keep_the_chain_and_the_tree() {
        let conn = store::in_memory().unwrap();
        sample(&conn, 5);
        let tx = conn.write().unwrap();
        for i in 0..40 {
            append(&tx, t(100 + i), Event::new("alice", "a")).unwrap();
        }
        tx.savepoint("s").unwrap();
        for i in 0..7 {
            append(&tx, t(200 + i), Event::new("alice", "gone")).unwrap();
        }
        tx.rollback_to("s").unwrap();
        let seq = append(&tx, t(300), Event::new("alice", "after")).unwrap();
        assert_eq!(seq, 46);
        tx.commit().unwrap();
        let v = verify(&conn).unwrap();
        assert!(v.ok && v.events == 46, "{v:?}");
        let mut frontier = merkle::Frontier::default();
        all_leaves(&conn).into_iter().for_each(|l| frontier.push(l));
        assert_eq!(tree_root(&conn, 46).unwrap(), frontier.root());
        // The next transaction reads the end afresh (another writer may have appended).
        let other = conn.write().unwrap();
        append(&other, t(400), Event::new("bob", "b")).unwrap();
        other.commit().unwrap();
        let tx = conn.write().unwrap();
        assert_eq!(append(&tx, t(401), Event::new("alice", "c")).unwrap(), 48);
        tx.commit().unwrap();
        assert!(verify(&conn).unwrap().ok);
    }

    /// Events appended together (in groups across `ROWS_PER_INSERT`) make the very log,
    /// tree included, that the same events appended one by one make.
    #[test]
    fn appends_together_are_the_log_of_appends_one_by_one() {
        let event = |i: usize| {
            Event::new("alice", "assignment.expire")
                .principal(&format!("u{i}"))
                .role("db-admin")
                .scope("/")
                .expires(Some(1_000 + i as i64))
                .detail("assignment", i as i64)
                .detail("note", "a \"quoted\" line\n")
        };
        let rows = |conn: &Db| -> Vec<String> {
            let mut out: Vec<String> = conn
                .query_map(
                    "SELECT seq || ' ' || prev_hash || ' ' || hash FROM audit_events ORDER BY seq",
                    params![],
                    |r| r.get(0),
                )
                .unwrap()
                .map(Result::unwrap)
                .collect();
            out.extend(
                conn.query_map(
                    "SELECT level || '/' || idx || ' ' || hash FROM merkle_nodes ORDER BY level, idx",
                    params![],
                    |r| r.get(0),
                )
                .unwrap()
                .map(Result::unwrap),
            );
            out
        };
        let one_by_one = store::in_memory().unwrap();
        let together = store::in_memory().unwrap();
        sample(&one_by_one, 3);
        sample(&together, 3);
        let tx = one_by_one.write().unwrap();
        for i in 0..200 {
            append(&tx, t(50), event(i)).unwrap();
        }
        tx.commit().unwrap();
        let tx = together.write().unwrap();
        let mut next = 0;
        for group in [1, 64, 65, 3, 67] {
            let seqs = append_all(&tx, t(50), (next..next + group).map(event).collect()).unwrap();
            let want: Vec<i64> = (next as i64 + 4..next as i64 + 4 + group as i64).collect();
            assert_eq!(seqs, want);
            next += group;
        }
        assert!(append_all(&tx, t(50), Vec::new()).unwrap().is_empty());
        tx.commit().unwrap();
        assert_eq!(rows(&together), rows(&one_by_one));
        assert_eq!(
            rows(&together).len(),
            203 + 2 * 203 - 203usize.count_ones() as usize
        );
        let v = verify(&together).unwrap();
        assert!(v.ok && v.events == 203, "{v:?}");
    }

    fn all_leaves(conn: &Db) -> Vec<merkle::Hash> {
        let mut leaves = Vec::new();
        for_each(conn, &Filter::default(), None, |e| {
            leaves.push(e.leaf());
            Ok(())
        })
        .unwrap();
        leaves
    }

    /// `fields` as `write_canonical` writes them, and as `serde_json` does.
    /// Every byte, at every place of a word, among fillers that do and do not need escaping.
    #[test]
    fn every_byte_is_found_at_every_place_in_a_word() {
        let needs = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        for b in 0..=255u8 {
            for place in 0..8 {
                for filler in [b'a', 0x00, 0x1f, 0x20, 0x21, b'"', b'\\', 0x7f, 0x80, 0xff] {
                    let mut word = [filler; 8];
                    word[place] = b;
                    let first = word.iter().position(|&c| needs(c));
                    let marks = escaped(u64::from_le_bytes(word));
                    let found = (marks != 0).then(|| marks.trailing_zeros() as usize / 8);
                    assert_eq!(found, first, "byte {b:#x} at {place} among {filler:#x}");
                }
            }
        }
    }

    fn canonical_and_serde_json(fields: &[String; 13]) -> (Vec<u8>, Vec<u8>) {
        let refs: [&str; 13] = std::array::from_fn(|i| fields[i].as_str());
        let mut ours = Vec::new();
        write_canonical(&mut ours, &refs);
        (ours, serde_json::to_vec(&refs).unwrap())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// The canonical bytes are exactly serde_json's compact array, whatever the text
        /// (quotes, backslashes, control characters, DEL, any Unicode).
        #[test]
        fn canonical_is_serde_json(fields in proptest::array::uniform13(
            proptest::string::string_regex("(?s).{0,12}").unwrap()
        )) {
            let (ours, serde) = canonical_and_serde_json(&fields);
            proptest::prop_assert_eq!(ours, serde);
        }

        /// The same, from the characters that need escaping and their neighbours.
        #[test]
        fn escapes_are_serde_jsons(fields in proptest::array::uniform13(
            proptest::string::string_regex("[\\x00-\\x20\"\\\\/a\\x7f\u{e9}\u{2028}\u{1F600}]{0,16}").unwrap()
        )) {
            let (ours, serde) = canonical_and_serde_json(&fields);
            proptest::prop_assert_eq!(ours, serde);
        }

        /// The lowest byte a word marks is its first escaped byte, whatever the bytes around
        /// it; no mark, no escaped byte.
        #[test]
        fn a_words_first_escaped_byte_is_found(word in proptest::array::uniform8(proptest::prop_oneof![
            0u8..=255,
            proptest::sample::select(vec![0x00u8, 0x01, 0x1f, 0x20, 0x21, b'"', b'\\', 0x5b, 0x5d, 0x7f, 0x80, 0xa2, 0xdc, 0xff]),
        ])) {
            let first = word.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\');
            let marks = escaped(u64::from_le_bytes(word));
            let found = (marks != 0).then(|| marks.trailing_zeros() as usize / 8);
            proptest::prop_assert_eq!(found, first);
        }

        /// Instants written a day at a time are `rfc3339(from_unix(..))`, in and out of the
        /// range pim accepts.
        #[test]
        fn instants_are_rfc3339(times in proptest::collection::vec(
            proptest::prop_oneof![
                -100_000i64..300_000,
                0i64..=crate::time::MAX_INSTANT,
                crate::time::MAX_INSTANT - 100_000..crate::time::MAX_INSTANT + 100_000,
                proptest::num::i64::ANY,
            ],
            1..20,
        )) {
            let (mut out, mut day, mut date) = (String::new(), None, String::new());
            for secs in times {
                instant(&mut out, secs, &mut day, &mut date);
                proptest::prop_assert_eq!(&out, &rfc3339(from_unix(secs)), "{}", secs);
            }
        }
    }
}
