//! pim's integration tests: one binary over the real `pim` executable, run against SQLite
//! and (see `support::postgres_suite`) against PostgreSQL.

#![allow(dead_code)]

mod support;

mod alerts;
mod apply;
mod approvals;
mod cli;
mod concurrency;
mod examples;
mod exec;
mod import;
mod notifications;
mod reviews;
mod scripting;
mod security;
mod services;
mod setgid;
mod store;

/// The whole suite again on PostgreSQL, from the SQLite pass: this binary, run with
/// `PIM_TEST_BACKEND=postgres` against the server of `support::postgres` (the one
/// `PIM_TEST_POSTGRES` names, or a throwaway cluster). It fails unless that pass ran and
/// passed, so that `cargo test` never silently leaves PostgreSQL out.
#[test]
fn postgres_suite() {
    if support::on_postgres() {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("PIM_TEST_BACKEND", "postgres")
        .env("PIM_TEST_POSTGRES", support::postgres::admin_url())
        .args(["--skip", "postgres_suite"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("test result:"))
        .unwrap_or("no summary")
        .to_string();
    eprintln!("PostgreSQL pass: {summary}");
    assert!(
        out.status.success(),
        "the PostgreSQL pass failed:\n{stdout}\n{stderr}"
    );
    let passed: usize = summary
        .split_once(" passed")
        .and_then(|(head, _)| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 90,
        "the PostgreSQL pass ran only {passed} tests: {summary}"
    );
}
