//! pim's integration tests: one binary over the real `pim` executable, run against SQLite
//! and (see `support::postgres_suite`) against PostgreSQL.

#![allow(dead_code)]

mod support;

mod alerts;
mod apply;
mod approvals;
mod cli;
mod concurrency;
mod conformance;
mod examples;
mod exec;
mod import;
mod notifications;
mod performance;
mod proofs;
mod reviews;
mod scripting;
mod security;
mod services;
mod setgid;
mod store;
mod terminal;

/// The whole suite again on PostgreSQL, from the SQLite pass: this binary, run with
/// `PIM_TEST_BACKEND=postgres` against the server of `support::postgres` (the one
/// `PIM_TEST_POSTGRES` names, or a throwaway cluster). It fails unless that pass ran and
/// passed, so that `cargo test` never silently leaves PostgreSQL out.
#[test]
fn postgres_suite() {
    support::postgres::postgres_pass("postgres_suite", 100);
}
