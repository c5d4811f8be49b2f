//! What every command needs from the environment: the database path, who is acting, and
//! whether we may prompt.

use super::Cli;
use crate::clock::SystemClock;
use crate::error::Error;
use crate::{store, Pim};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Ctx {
    pub db: PathBuf,
    pub as_user: Option<String>,
    pub json: bool,
    /// We may prompt: stdin is a terminal and --no-input was not given.
    pub interactive: bool,
    pub quiet: bool,
    pub verbose: bool,
}

/// The default database: $XDG_DATA_HOME/pim/pim.db, or ~/.local/share/pim/pim.db.
fn default_db() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("pim").join("pim.db")
}

/// The real user id's account name (never $USER).
pub fn real_user() -> Result<String, Error> {
    // SAFETY: getuid cannot fail; getpwuid_r writes only into the buffers we hand it.
    let uid = unsafe { libc::getuid() };
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return Err(Error::Environment(format!(
            "The operating system has no account name for uid {uid}."
        )));
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated, alive for this scope.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Ok(name.to_string_lossy().into_owned())
}

impl Ctx {
    pub fn new(cli: &Cli) -> Ctx {
        Ctx {
            db: cli.db.clone().unwrap_or_else(default_db),
            as_user: cli.as_user.clone().filter(|s| !s.is_empty()),
            json: cli.json,
            interactive: !cli.no_input && std::io::stdin().is_terminal(),
            quiet: cli.quiet,
            verbose: cli.verbose,
        }
    }

    /// The acting principal. `--as` is honoured only for a caller who could write the
    /// database directly anyway: root, or the owner of the file.
    pub fn actor(&self) -> Result<String, Error> {
        let real = real_user()?;
        let Some(other) = &self.as_user else {
            return Ok(real);
        };
        if other == &real {
            return Ok(real);
        }
        use std::os::unix::fs::MetadataExt;
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let owner = std::fs::metadata(&self.db).map(|m| m.uid()).ok();
        if uid == 0 || owner == Some(uid) {
            Ok(other.clone())
        } else {
            Err(Error::Refused(format!(
                "--as (or PIM_USER) is honoured only for root or the owner of {}; you are {real}. Run without it.",
                self.db.display()
            )))
        }
    }

    /// Open the database (after settling who acts, so a refused --as changes nothing).
    pub fn open(&self) -> anyhow::Result<(Pim, String)> {
        // A service authenticates with its token instead of an operating-system account.
        if let Some(token) = std::env::var("PIM_TOKEN").ok().filter(|t| !t.is_empty()) {
            if self.as_user.is_some() {
                return Err(Error::Usage(
                    "PIM_TOKEN and --as (or PIM_USER) cannot be used together; a token names its service."
                        .to_string(),
                )
                .into());
            }
            let conn = store::open(&self.db)?;
            let mut pim = Pim::new(conn, Arc::new(SystemClock));
            let service = pim.authenticate_token(&token)?;
            return Ok((pim, service));
        }
        let actor = self.actor()?;
        let conn = store::open(&self.db)?;
        if self.verbose {
            eprintln!("pim: database {}, acting as {actor}", self.db.display());
        }
        Ok((Pim::new(conn, Arc::new(SystemClock)), actor))
    }

    /// A warning or note on stderr, unless --quiet.
    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
}
