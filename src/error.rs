//! The core's error kinds. Each kind maps to one exit code of the contract.

use thiserror::Error;

/// Everything the core can refuse or fail at.
#[derive(Debug, Error)]
pub enum Error {
    /// The environment failed us: database missing or unreadable, I/O (exit 1).
    #[error("{0}")]
    Environment(String),
    /// Bad usage or input (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Refused: not permitted, not eligible, MFA failed, policy not met (exit 3).
    #[error("{0}")]
    Refused(String),
    /// The database is locked by another process past the busy timeout (exit 1); the
    /// message names the processes that hold it. The files are those whose locks root's pim
    /// may break: the ones this process had open for it, when they are root's (none else;
    /// never looked up again by path).
    #[error("{0}")]
    Locked(String, Vec<crate::privilege::FileId>),
    /// Unknown user, role or request (exit 4).
    #[error("{0}")]
    NotFound(String),
    /// Conflict with the current state (exit 5).
    #[error("{0}")]
    Conflict(String),
    /// A refusal whose audit event was written in the transaction: the transaction is
    /// committed (so the attempt stays on record) and the inner error is returned.
    #[error("{0}")]
    Recorded(Box<Error>),
    #[error("Input or output failed: {0}.")]
    Io(#[from] std::io::Error),
    #[error(
        "The database failed: {0}. Check it with `pim audit verify`, or restore it from a backup."
    )]
    Store(crate::store::StoreError),
}

impl Error {
    /// The exit code of the contract for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Environment(_) | Error::Locked(..) | Error::Store(_) | Error::Io(_) => 1,
            Error::Usage(_) => 2,
            Error::Refused(_) => 3,
            Error::NotFound(_) => 4,
            Error::Conflict(_) => 5,
            Error::Recorded(inner) => inner.exit_code(),
        }
    }

    /// Whether this is SQLite saying the database stayed locked past the busy timeout.
    pub fn is_locked(&self) -> bool {
        match self {
            Error::Locked(..) => true,
            Error::Store(e) => e.is_busy(),
            Error::Recorded(inner) => inner.is_locked(),
            _ => false,
        }
    }

    /// The files of a database that stayed locked whose locks root's pim may break (none
    /// for any other error).
    pub fn locked_files(&self) -> &[crate::privilege::FileId] {
        match self {
            Error::Locked(_, files) => files,
            Error::Recorded(inner) => inner.locked_files(),
            _ => &[],
        }
    }

    /// A wrong or reused TOTP code that left the authenticator unlocked: a terminal may ask
    /// for the code again (the lockout rules count every try).
    pub fn is_wrong_code(&self) -> bool {
        match self {
            Error::Recorded(inner) => inner.is_wrong_code(),
            Error::Refused(m) => m.starts_with(WRONG_CODE) && !m.contains("now locked"),
            _ => false,
        }
    }

    /// Mark a refusal whose audit event is already in the transaction.
    pub fn recorded(self) -> Error {
        match self {
            Error::Recorded(_) => self,
            other => Error::Recorded(Box::new(other)),
        }
    }
}

/// How the refusal of a wrong TOTP code begins.
pub const WRONG_CODE: &str = "MFA failed: ";

pub type Result<T, E = Error> = std::result::Result<T, E>;
