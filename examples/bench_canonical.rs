//! Write every audit event's canonical encoding (the bytes `pim audit verify` hashes into the
//! chain and the Merkle tree) to stdout, once each, for `examples/bench.py` to time
//! `sha256sum` over the same bytes.

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: bench_canonical DB");
        std::process::exit(2);
    };
    let conn = if path.starts_with("postgres") {
        pim::store::pg::open(&path, false)?.conn
    } else {
        pim::store::open(std::path::Path::new(&path))?.conn
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    conn.each_event(|read| match read {
        Ok(e) => {
            if let Err(err) = out.write_all(&e.canonical()) {
                failed = Some(err);
                return false;
            }
            true
        }
        Err(_) => false,
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    out.flush()?;
    Ok(())
}
