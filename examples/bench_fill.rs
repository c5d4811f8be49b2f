//! Fill a pim database for `examples/bench.py`: USERS users (`u00000`, ..., those missing) added through
//! pim's own operations, then the audit log topped up to EVENTS events of realistic size.
//! Assignments are not made here: the benchmark imports them with `pim assignment import`,
//! which it measures.
//!
//! With `activate USERS SCOPES`, each of the first USERS users activates `ops` (a role
//! without MFA) for an hour at `/s0` ... at SCOPES scopes: activations for the sweep to end.
//!
//! ```sh
//! pim --db /tmp/b.db init --admin admin
//! cargo run --release --example bench_fill -- /tmp/b.db 1000 1000000
//! cargo run --release --example bench_fill -- /tmp/b.db activate 1000 10
//! ```

use chrono::{Duration, Utc};
use pim::audit::{append, Event};
use pim::clock::SystemClock;
use pim::vault::Vault;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [path, mode, users, scopes] = args.as_slice() {
        if mode == "activate" {
            return activate(path, users.parse()?, scopes.parse()?);
        }
    }
    let [path, users, events] = args.as_slice() else {
        eprintln!("usage: bench_fill DB USERS EVENTS | bench_fill DB activate USERS SCOPES");
        std::process::exit(2);
    };
    let (users, events): (usize, i64) = (users.parse()?, events.parse()?);
    let mut pim = open(path)?;
    for i in 0..users {
        let name = format!("u{i:05}");
        if pim.user(&name).is_err() {
            pim.add_user("admin", &name, None, None)?;
        }
    }
    let conn = pim::store::open(std::path::Path::new(path))?.conn;
    let have = conn.audit_count()?;
    let count = (events - have).max(0);
    let start = Utc::now() - Duration::seconds(count + 3600);
    let mut done = 0;
    while done < count {
        let tx = conn.write()?;
        for _ in 0..50_000.min(count - done) {
            let user = format!("u{:05}", done as usize % users.max(1));
            let event = Event::new(&user, "activation.request")
                .principal(&user)
                .role("db-admin")
                .scope("/team1")
                .justification(Some("INC-4711 replica lag, failing over, see runbook"))
                .ticket(Some("CHG-2026-0042"))
                .expires(Some(start.timestamp() + done + 4 * 3600))
                .detail("duration", "4h")
                .detail("mfa", true);
            append(&tx, start + Duration::seconds(done), event)?;
            done += 1;
        }
        tx.commit()?;
    }
    eprintln!("{users} users added, the log has {} events", have + count);
    Ok(())
}

fn open(path: &str) -> Result<pim::Pim, Box<dyn std::error::Error>> {
    let db = pim::store::open(std::path::Path::new(path))?;
    let instance = db.conn.instance()?;
    let vault = Vault::load(&instance, false, None, None)?;
    let mut pim = pim::Pim::new(db.conn, Arc::new(SystemClock), vault);
    pim.without_budget();
    Ok(pim)
}

fn activate(path: &str, users: usize, scopes: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut pim = open(path)?;
    for u in 0..users {
        let name = format!("u{u:05}");
        for s in 0..scopes {
            pim.activate(
                &name,
                pim::ops::ActivationInput {
                    role: "ops".to_string(),
                    scope: Some(pim::scope::Scope::parse(&format!("/s{s}"))?),
                    duration: Some(chrono::Duration::hours(1)),
                    start: None,
                    justification: Some("INC-1 bench".to_string()),
                    ticket: None,
                    code: None,
                },
            )?;
        }
    }
    eprintln!("{} activations of ops, for an hour", users * scopes);
    Ok(())
}
