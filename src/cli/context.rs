//! What every command needs from the environment: the database path, who is acting, and
//! whether we may prompt. The database is opened once per command and kept here, so that
//! what the command queued is delivered after it, through the same connection.

use super::Cli;
use crate::clock::SystemClock;
use crate::error::Error;
use crate::privilege::{self, FileId};
use crate::vault::Vault;
use crate::{store, Pim};
use std::cell::{RefCell, RefMut};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Ctx {
    /// The database file, or (for a server) its URL without the password: for messages.
    pub db: PathBuf,
    /// A PostgreSQL server's URL, and whether it is the installed store (from the root-owned
    /// configuration file, never from the caller's environment).
    pub server: Option<(String, bool)>,
    pub as_user: Option<String>,
    pub json: bool,
    /// We may prompt: stdin is a terminal and --no-input was not given.
    pub interactive: bool,
    pub quiet: bool,
    pub verbose: bool,
    session: RefCell<Option<Session>>,
    /// Whether the database opened is the installed one of a set-group-id pim.
    installed: std::cell::Cell<bool>,
    /// Why this process runs none of the open database's notification and witness commands
    /// (`None` before it is opened: nothing runs).
    withheld: std::cell::Cell<Option<Withheld>>,
    /// The database file and its companions, which no output may replace.
    files: std::cell::OnceCell<Vec<FileId>>,
    /// The database file's path (SQLite's): no output may take its name or a companion's.
    db_file: std::cell::OnceCell<std::path::PathBuf>,
    /// Root may wait out a lock holder that is not stopped (`pim sweep`, from a timer); any
    /// other command (a PAM `check`) ends only the stopped and frozen ones and goes on.
    patient: std::cell::Cell<bool>,
}

/// The open database of this command.
struct Session {
    pim: Pim,
    /// The owner of the file SQLite opened (for `--as`).
    owner: u32,
}

/// How long root waits for a holder of the database's locks that is not stopped before it
/// ends it (no pim transaction takes this long unless it is starved).
pub const STUCK: std::time::Duration = std::time::Duration::from_secs(60);

/// How long root's sweep keeps trying to get in before it gives up for this run.
pub const GIVE_UP: std::time::Duration = std::time::Duration::from_secs(180);

/// The default database: $XDG_DATA_HOME/pim/pim.db, or ~/.local/share/pim/pim.db.
fn default_db() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("pim").join("pim.db")
}

/// The real user id's account name (never $USER). Looked up once a process (the real
/// user id never changes; each lookup reads the system's account database).
pub fn real_user() -> Result<String, Error> {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let uid = privilege::real_uid();
    // Only a name found is kept: a lookup that failed (NSS unreachable) is asked again.
    let name = match NAME.get() {
        Some(name) => Some(name.clone()),
        None => privilege::account_name(uid).map(|name| NAME.get_or_init(|| name).clone()),
    };
    name.ok_or_else(|| {
        Error::Environment(format!(
            "The operating system has no account name for uid {uid}."
        ))
    })
}

/// Why a process runs none of a database's notification and witness commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// No database is open yet.
    NotOpen,
    /// The installed database, for a caller who is not root: they wait for root's sweep.
    NotRoot,
    /// A file another account owns (root asked to sweep it, say).
    AnotherAccount,
    /// A file of the caller's that other accounts could change, or plant a `-wal` beside.
    OthersCanWrite,
    /// A file on a file system another account mounted (FUSE, or through a mount helper):
    /// its owner and modes are that account's say.
    ForeignMount,
    /// A server named with `--db`/`PIM_DB`, in a process not chosen to deliver for it.
    Server,
}

/// The environment variable by which an account says it delivers the commands of a server it
/// names (its policy holders, and anyone with its runtime role's password, wrote them;
/// anyone else runs none of them): the server as pim shows it,
/// `postgres://USER@HOST:PORT/DATABASE`, so that it holds for that server alone.
pub const RUN_COMMANDS: &str = "PIM_RUN_COMMANDS";

/// Commands run as whoever runs pim, so only for an account that wrote them or chose to: in
/// the installed pim, root alone (callers wait for root's `pim sweep`); for a database file,
/// its owner alone, and only while nobody else can change what SQLite reads as it (root
/// running pim on a file another account owns would otherwise run that account's commands as
/// root); for a server named by the caller, whose policy any of its policy holders may write,
/// only an account that named that very server in `PIM_RUN_COMMANDS` (the team's delivery
/// account).
fn withheld(file: &store::DbFile, server: Option<&str>) -> Option<Withheld> {
    let uid = privilege::real_uid();
    if file.foreign_mount {
        // (an installed database on one is refused when opened; one just created there is
        // not trusted either)
        Some(Withheld::ForeignMount)
    } else if file.installed {
        (uid != 0).then_some(Withheld::NotRoot)
    } else if let Some(url) = server {
        let chosen = std::env::var_os(RUN_COMMANDS)
            .is_some_and(|v| v.to_str() == Some(store::pg::describe(url).as_str()));
        (!chosen).then_some(Withheld::Server)
    } else if file.owner != uid {
        Some(Withheld::AnotherAccount)
    } else if !file.owner_alone {
        Some(Withheld::OthersCanWrite)
    } else {
        None
    }
}

impl Ctx {
    pub fn new(cli: &Cli) -> anyhow::Result<Ctx> {
        let server = match &cli.db {
            Some(db) if store::pg::is_url(db) => Some((db.to_string_lossy().into_owned(), false)),
            Some(_) => None,
            None => store::pg::installed_url()?.map(|url| (url, true)),
        };
        let db = match &server {
            Some((url, _)) => PathBuf::from(store::pg::describe(url)),
            None => cli.db.clone().unwrap_or_else(default_db),
        };
        Ok(Ctx {
            db,
            server,
            as_user: cli.as_user.clone().filter(|s| !s.is_empty()),
            json: cli.json,
            interactive: !cli.no_input && std::io::stdin().is_terminal(),
            quiet: cli.quiet,
            verbose: cli.verbose,
            session: RefCell::new(None),
            installed: std::cell::Cell::new(false),
            withheld: std::cell::Cell::new(Some(Withheld::NotOpen)),
            files: std::cell::OnceCell::new(),
            db_file: std::cell::OnceCell::new(),
            patient: std::cell::Cell::new(false),
        })
    }

    /// The acting principal. `--as` is honoured only for a caller who could write the
    /// database directly anyway: root, or (without the set-group-id install) the owner of
    /// the file SQLite actually opened.
    fn actor(&self, owner: Option<u32>) -> Result<String, Error> {
        let real = real_user()?;
        let Some(other) = &self.as_user else {
            return Ok(real);
        };
        if other == &real {
            return Ok(real);
        }
        let uid = privilege::real_uid();
        let allowed = uid == 0 || (!privilege::is_setgid() && owner == Some(uid));
        if allowed {
            Ok(other.clone())
        } else if privilege::is_setgid() {
            Err(Error::Refused(format!(
                "--as (or PIM_USER) is honoured only for root in an installed pim; you are {real}. Run without it."
            )))
        } else {
            Err(Error::Refused(format!(
                "--as (or PIM_USER) is honoured only for root or the owner of {}; you are {real}. Run without it.",
                self.db.display()
            )))
        }
    }

    /// Open the database (once per command) and settle who acts. For the installed
    /// database the pim group is used to open it and read its key, then given up for good.
    pub fn open(&self) -> anyhow::Result<(RefMut<'_, Pim>, String)> {
        // A refused --as needs no database: refuse it before opening (in the installed pim
        // it is root's alone; otherwise the file's owner's, decided again on the file that
        // SQLite actually opens).
        if self.as_user.is_some() {
            if privilege::is_setgid() {
                self.actor(None)?;
            } else if self.server.is_some() {
                // A server named by the caller is reached with the caller's own credentials.
                self.actor(Some(privilege::real_uid()))?;
            } else if let Ok(meta) = std::fs::metadata(&self.db) {
                use std::os::unix::fs::MetadataExt;
                self.actor(Some(meta.uid()))?;
            }
        }
        let mut session = self.session.try_borrow_mut().map_err(|_| {
            Error::Environment("The database is already in use by this command.".to_string())
        })?;
        if session.is_none() {
            *session = Some(self.start()?);
        }
        let owner = session.as_ref().map(|s| s.owner);
        let pim = RefMut::map(session, |s| &mut s.as_mut().expect("opened above").pim);
        self.settle(pim, owner)
    }

    fn start(&self) -> anyhow::Result<Session> {
        // Root ends a pim that holds the database and will not let go (anyone can stop or
        // starve their own process mid-transaction; only root can end it), records it, and
        // goes on. Root's sweep keeps trying up to `GIVE_UP`, and after `STUCK` without
        // getting in ends whoever holds the lock; other root commands (a PAM `check`) end
        // only the stopped and frozen ones, once.
        let mut ended = Vec::new();
        let first = std::time::Instant::now();
        let db = loop {
            if let Some((url, installed)) = &self.server {
                break store::pg::open(url, *installed)?;
            }
            match store::open(&self.db) {
                Err(e) if e.is_locked() && privilege::real_uid() == 0 => {
                    // The files SQLite had open and found locked, not what the path names
                    // now: its owner may point it at another account's locked file.
                    let files = e.locked_files().to_vec();
                    let long = self.patient.get() && first.elapsed() >= STUCK;
                    let now_ended = store::end_stuck_holders(&files, long);
                    let gave_up = if self.patient.get() {
                        first.elapsed() >= GIVE_UP
                    } else {
                        now_ended.is_empty()
                    };
                    ended.extend(now_ended);
                    if gave_up {
                        return Err(e.into());
                    }
                }
                other => break other?,
            }
        };
        self.installed.set(db.file.installed);
        self.withheld.set(withheld(
            &db.file,
            self.server.as_ref().map(|(url, _)| url.as_str()),
        ));
        let _ = self.files.set(db.file.files.clone());
        if self.server.is_none() {
            let _ = self.db_file.set(db.file.path.clone());
        }
        let os_account = real_user()?;
        let instance = db.conn.instance()?;
        // A key only for the caller's own database (or the installed one, or a server):
        // the instance id that names the key is in the database, where anyone who made the
        // file could have copied it from another's (see `Vault::not_yours`).
        let yours =
            db.file.installed || self.server.is_some() || db.file.owner == privilege::real_uid();
        // A server the caller named answers as it likes, the instance id too: a key only
        // for the servers it is bound to (`vault::bind`).
        let named_server = match &self.server {
            Some((url, false)) => Some(store::pg::identity(url)?),
            _ => None,
        };
        let mut vault = if yours {
            Vault::load(
                &instance,
                db.file.installed,
                named_server.as_deref(),
                self.server.is_none().then_some(db.file.group),
            )?
        } else {
            Vault::not_yours(format!(
                "{} is {}'s file, not yours: pim uses a database's key (its TOTP secrets, its signed checkpoints and receipts) only as the file's owner, so that a file another account made with your database's instance id gets no signature of your key. Run this as its owner.",
                db.file.path.display(),
                privilege::account_name(db.file.owner)
                    .unwrap_or_else(|| format!("uid {}", db.file.owner))
            ))
        };
        if yours && !vault.has_key() && self.may_create_key(&db)? {
            // Made when a secret is first sealed, not by every command that reads.
            vault.create_when_needed(
                &instance,
                db.file.installed.then_some(db.file.group),
                named_server.as_deref(),
            );
        }
        // Everything from here on runs with the caller's own rights only.
        privilege::drop_for_good();
        let mut pim = Pim::new(db.conn, Arc::new(SystemClock), vault);
        if db.file.installed && privilege::real_uid() != 0 {
            pim.reserve_commands_for_root();
        }
        if privilege::real_uid() == 0 {
            // Root could write the database directly anyway.
            pim.without_budget();
        }
        for (holder, why) in &ended {
            pim.record_lock_break(&os_account, holder, why)?;
        }
        pim.seal_plain_secrets(&os_account)?;
        if self.verbose {
            eprintln!(
                "pim: database {}{}",
                db.file.path.display(),
                if db.file.installed {
                    " (the installed database)"
                } else {
                    ""
                }
            );
        }
        Ok(Session {
            pim,
            owner: db.file.owner,
        })
    }

    /// A missing key is created by whoever could write the database directly (root, or the
    /// owner of a personal database), and only while no secret is sealed under another key.
    fn may_create_key(&self, db: &store::Database) -> anyhow::Result<bool> {
        let uid = privilege::real_uid();
        let entitled = if db.file.installed {
            uid == 0
        } else {
            uid == 0 || uid == db.file.owner
        };
        if !entitled {
            return Ok(false);
        }
        let sealed = db.conn.sealed_secrets()?;
        Ok(sealed == 0)
    }

    fn settle<'a>(
        &self,
        mut pim: RefMut<'a, Pim>,
        owner: Option<u32>,
    ) -> anyhow::Result<(RefMut<'a, Pim>, String)> {
        // A service authenticates with its token instead of an operating-system account.
        if let Some(token) = std::env::var("PIM_TOKEN").ok().filter(|t| !t.is_empty()) {
            if self.as_user.is_some() {
                return Err(Error::Usage(
                    "PIM_TOKEN and --as (or PIM_USER) cannot be used together; a token names its service."
                        .to_string(),
                )
                .into());
            }
            let service = pim.authenticate_token(&token, &real_user()?)?;
            return Ok((pim, service));
        }
        let actor = self.actor(owner)?;
        // A service principal signs in with its token only: an operating-system account of
        // the same name is not that service (root, acting with --as, excepted).
        if privilege::real_uid() != 0 && pim.user(&actor).is_ok_and(|u| u.kind == "service") {
            return Err(Error::Refused(format!(
                "'{actor}' is a service principal, which signs in with its token (PIM_TOKEN) only; an account of the same name is not that service."
            ))
            .into());
        }
        if self.verbose {
            eprintln!("pim: acting as {actor}");
        }
        Ok((pim, actor))
    }

    /// The files no output may replace: the database and its -wal and -shm.
    pub fn protected_files(&self) -> Vec<FileId> {
        self.files.get().cloned().unwrap_or_default()
    }

    /// Where the database is, for names that must differ between databases: its file's
    /// path, or the server as `pg::describe` names it (no password).
    pub fn db_identity(&self) -> String {
        match &self.server {
            Some((url, _)) => store::pg::describe(url),
            None => self
                .db_file
                .get()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }
    }

    /// What no output may be: the database's files, and the names SQLite reads beside it.
    pub fn protected(&self) -> crate::privilege::Protected {
        crate::privilege::Protected {
            ids: self.protected_files(),
            db: self.db_file.get().cloned(),
        }
    }

    /// After the command: deliver what it queued (decided by the outbox, not by the
    /// command's name). A failure is the outbox's business (retried by `pim sweep`), never
    /// the command's; it is recorded under the operating-system account.
    pub fn finish(&self) {
        let Ok(mut session) = self.session.try_borrow_mut() else {
            return;
        };
        let Some(session) = session.as_mut() else {
            return;
        };
        let queued = session.pim.queued().to_vec();
        if queued.is_empty() {
            return;
        }
        let actor = real_user().unwrap_or_else(|_| "pim".to_string());
        let scope = crate::notify::Scope {
            only: Some(&queued),
            commands: self.runs_commands(),
            budget: Some(crate::notify::FOREGROUND),
        };
        match session.pim.deliver(&actor, scope) {
            Ok(d) if !d.retrying.is_empty() || !d.failed.is_empty() || !d.left.is_empty() => {
                self.note(&format!(
                    "Note: {} notification(s) could not be delivered yet; `pim sweep` retries them (see `pim notification list`).",
                    d.retrying.len() + d.failed.len() + d.left.len()
                ))
            }
            Ok(_) => {}
            Err(e) => self.note(&format!("Note: notifications were not delivered: {e}")),
        }
    }

    /// "Did you mean": the user name closest to `name` that the caller may see, when this
    /// command opened the database.
    pub fn closest_user(&self, name: &str) -> Option<String> {
        if self.session.try_borrow().ok()?.is_none() {
            return None;
        }
        let (pim, actor) = self.open().ok()?;
        let viewer = pim.viewer(&actor).ok()?;
        pim.closest_user(&viewer, name).ok().flatten()
    }

    /// After a command, on a terminal: a note when an activation of the caller's ends
    /// within ten minutes, with how to keep it.
    pub fn note_ending_soon(&self) {
        use std::io::IsTerminal;
        if self.quiet || self.json || !std::io::stderr().is_terminal() {
            return;
        }
        if self.session.try_borrow().map_or(true, |s| s.is_none()) {
            return;
        }
        let Ok((pim, actor)) = self.open() else {
            return;
        };
        let Ok(status) = pim.status(&actor) else {
            return;
        };
        let now = pim.now().timestamp();
        for h in status.active.iter().filter(|h| h.request.is_some()) {
            if let Some(left) = h.until_at.map(|u| u - now).filter(|&l| l > 0 && l < 600) {
                self.note(&format!(
                    "Note: your {} at {} ends in {}; `pim extend {}` keeps it longer.",
                    h.role,
                    h.scope,
                    crate::time::format_duration(chrono::Duration::seconds(left)),
                    h.role
                ));
            }
        }
    }

    /// Whether the database opened is the installed one of a set-group-id pim.
    pub fn installed(&self) -> bool {
        self.installed.get()
    }

    /// Whether notification and witness commands (and the witness file's write) run in this
    /// process: see `withheld`.
    pub fn runs_commands(&self) -> bool {
        self.withheld.get().is_none()
    }

    /// Why they do not, for a note.
    pub fn commands_withheld(&self) -> Option<Withheld> {
        self.withheld.get()
    }

    /// Whether this process may deliver other people's notifications (`pim sweep`): not in
    /// the installed pim for a caller who is not root, who could stop or starve the process
    /// after it claimed them.
    pub fn delivers_for_everyone(&self) -> bool {
        !self.installed.get() || privilege::real_uid() == 0
    }

    /// As root: end the stopped pim processes that hold the open database's locks, and record
    /// it. Returns whether any was ended (so that the caller may try again).
    pub fn end_stuck_holders(&self, pim: &mut Pim, all: bool) -> bool {
        let files = self.protected_files();
        let ended = store::end_stuck_holders(&files, all);
        let actor = real_user().unwrap_or_else(|_| "root".to_string());
        for (holder, why) in &ended {
            let _ = pim.record_lock_break(&actor, holder, why);
        }
        !ended.is_empty()
    }

    /// Let root wait out a lock holder that is not stopped, up to `STUCK` (for `pim sweep`).
    pub fn be_patient(&self) {
        self.patient.set(true);
    }

    /// The sentence for a database that stayed locked after it was opened.
    pub fn locked(&self) -> Error {
        store::locked(&self.db, &self.protected_files(), false)
    }

    /// A warning or note on stderr, unless --quiet.
    pub fn note(&self, text: &str) {
        if !self.quiet {
            super::output::note(text);
        }
    }
}
