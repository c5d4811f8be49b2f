//! Fill a pim database's audit log with N realistic events, for measuring exports:
//!
//! ```sh
//! pim --db /tmp/big.db init --admin admin
//! cargo run --release --example audit_fill -- /tmp/big.db 1000000
//! /usr/bin/time -v pim --db /tmp/big.db --as admin audit export --output /tmp/big.csv
//! ```

use chrono::{Duration, Utc};
use pim::audit::{append, Event};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(count)) = (args.next(), args.next()) else {
        eprintln!("usage: audit_fill DB COUNT");
        std::process::exit(2);
    };
    let count: i64 = count.parse()?;
    let conn = pim::store::open(std::path::Path::new(&path))?.conn;
    let start = Utc::now() - Duration::seconds(count);
    let mut done = 0;
    while done < count {
        let tx = conn.write()?;
        for _ in 0..50_000.min(count - done) {
            let user = format!("user{}", done % 500);
            let event = Event::new(&user, "activation.request")
                .principal(&user)
                .role("db-admin")
                .scope("/prod/db")
                .request(done)
                .justification(Some(
                    "INC-4711 replica lag, failing over \"primary\", see runbook",
                ))
                .ticket(Some("CHG-2026-0042"))
                .expires(Some(start.timestamp() + done + 4 * 3600))
                .detail("duration", "4h")
                .detail("mfa", true);
            append(&tx, start + Duration::seconds(done), event)?;
            done += 1;
        }
        tx.commit()?;
    }
    eprintln!("appended {count} events to {path}");
    Ok(())
}
