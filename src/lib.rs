//! pim: Privileged Identity Management over one SQLite file.
//!
//! The core (everything but `cli`) takes plain values and a clock and returns typed results;
//! `cli` is the only place that parses arguments, prompts, and draws tables or JSON.

pub mod audit;
pub mod checkpoint;
pub mod cli;
pub mod clock;
mod cores;
pub mod error;
pub mod limits;
pub mod merkle;
pub mod mfa;
pub mod model;
pub mod notify;
pub mod ops;
pub mod policy;
pub mod privilege;
pub mod receipt;
pub mod replay;
pub mod scope;
mod sha256x2;
pub mod store;
pub mod text;
pub mod time;
pub mod vault;

pub use error::{Error, Result};
pub use ops::Pim;
