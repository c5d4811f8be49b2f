//! The one privilege of an installed pim: the group that owns the installed database.
//!
//! Installed set-group-id, pim starts with that group as its effective group. It lowers it at
//! once (keeping it only as the saved group), raises it only while it opens the installed
//! database and reads its key file (`store`, `vault`), and then gives it up for good (real,
//! effective and saved group ids) before it touches anything a caller named: their files,
//! their database, their commands. Every child process and every file a caller names goes
//! through this module, which gives the group up first; `tests/security.rs` fails when code
//! elsewhere spawns a process or opens a file by itself.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// The group we were installed set-group-id to (0: none).
static GROUP: AtomicU32 = AtomicU32::new(0);
/// Whether the process started set-group-id (`GROUP` is kept for messages after the drop).
static SETGID: AtomicBool = AtomicBool::new(false);
/// Whether the group was given up for good.
static DROPPED: AtomicBool = AtomicBool::new(false);

fn resgid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresgid only writes the three ids we hand it.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

fn set_effective(gid: u32) -> io::Result<()> {
    // SAFETY: setresgid changes this process's credentials; -1 leaves an id as it is.
    if unsafe { libc::setresgid(u32::MAX, gid, u32::MAX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Call first thing: when pim runs set-group-id, lower the effective group to the caller's
/// own (the installed group stays only as the saved group, to open the installed database).
pub fn init() -> io::Result<()> {
    let (real, effective, _) = resgid();
    if effective != real {
        GROUP.store(effective, Ordering::SeqCst);
        SETGID.store(true, Ordering::SeqCst);
        set_effective(real)?;
    }
    Ok(())
}

/// Whether this process was started set-group-id (even after the group was given up).
pub fn is_setgid() -> bool {
    SETGID.load(Ordering::SeqCst)
}

/// The installed group, if this process was started set-group-id.
pub fn installed_group() -> Option<u32> {
    is_setgid().then(|| GROUP.load(Ordering::SeqCst))
}

/// Whether this process may still raise the installed group (started set-group-id, and not
/// given it up for good yet).
pub fn group_kept() -> bool {
    is_setgid() && !DROPPED.load(Ordering::SeqCst)
}

/// The real user id of the caller.
pub fn real_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// The account name of `uid` (its number when the system has none).
pub fn account_name(uid: u32) -> Option<String> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes only into the buffers we hand it.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated, alive for this scope.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// The name of group `gid`, if the system has one.
pub fn group_name(gid: u32) -> Option<String> {
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrgid_r writes only into the buffers we hand it.
    let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || grp.gr_name.is_null() {
        return None;
    }
    // SAFETY: gr_name points into `buf`, NUL-terminated, alive for this scope.
    let name = unsafe { std::ffi::CStr::from_ptr(grp.gr_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Whether the operating system has an account named `name`.
pub fn account_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes only into the buffers we hand it.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    rc == 0 && !result.is_null()
}

/// Run `f` with the installed group as the effective group, then lower it again. Only for
/// the installed database and its key file, whose paths `store` and `vault` have checked.
pub fn with_group<T>(f: impl FnOnce() -> T) -> io::Result<T> {
    let Some(group) = installed_group() else {
        return Ok(f());
    };
    if DROPPED.load(Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "pim has already given up its group",
        ));
    }
    let (real, _, _) = resgid();
    set_effective(group)?;
    let out = f();
    set_effective(real)?;
    Ok(out)
}

/// Give the installed group up for good: real, effective and saved group ids become the
/// caller's real group. Idempotent. Exits the process if the kernel refuses, because going
/// on with the group would be worse than stopping.
pub fn drop_for_good() {
    if !is_setgid() || DROPPED.load(Ordering::SeqCst) {
        return;
    }
    let (real, _, _) = resgid();
    // SAFETY: setresgid changes only this process's credentials.
    let rc = unsafe { libc::setresgid(real, real, real) };
    if rc != 0 || resgid() != (real, real, real) {
        eprintln!("pim: cannot give up the pim group; stopping.");
        std::process::exit(1);
    }
    DROPPED.store(true, Ordering::SeqCst);
}

/// A child process, started with the caller's own identity only: the group is given up for
/// good first, and the child's environment carries no pim secret (`PIM_TOKEN`).
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    drop_for_good();
    let mut cmd = std::process::Command::new(program);
    cmd.env_remove("PIM_TOKEN");
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the child between fork and exec and calls only getresgid,
    // sigaction and sigprocmask, which are async-signal-safe; it refuses to exec with any
    // group but the real one.
    unsafe {
        cmd.pre_exec(|| {
            let (mut r, mut e, mut s) = (0, 0, 0);
            libc::getresgid(&mut r, &mut e, &mut s);
            if r != e || e != s {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "a child of pim would keep the pim group",
                ));
            }
            // The signals pim passes on (`pim exec`) are caught and held back in pim: the
            // child starts with their default action (or ignoring them, as pim was given
            // them) and takes any that came meanwhile.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in PASSED_ON {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, std::ptr::null(), &mut old);
                if old.sa_sigaction != libc::SIG_IGN {
                    let mut default: libc::sigaction = std::mem::zeroed();
                    default.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &default, std::ptr::null_mut());
                }
                libc::sigaddset(&mut set, sig);
            }
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    cmd
}

/// The signals `pim exec` passes on to its command.
pub const PASSED_ON: [libc::c_int; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
];

/// The identity of a file: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// What no output may be: the database's files, by identity (`ids`), and by name the
/// database at `db` and each companion SQLite reads beside it (`-wal`, `-shm`, `-journal`),
/// in any letter case (a case-folding file system takes DB-WAL for DB-wal), whether it is
/// there yet or not.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    pub ids: Vec<FileId>,
    pub db: Option<std::path::PathBuf>,
}

impl Protected {
    /// Nothing to keep apart (no database open).
    pub fn none() -> Protected {
        Protected::default()
    }

    /// Whether `path` names the database or a companion of it, in its directory.
    fn names_the_database(&self, path: &Path) -> bool {
        let Some(db) = &self.db else { return false };
        let (Some(name), Some(base)) = (path.file_name(), db.file_name()) else {
            return false;
        };
        let name = name.to_string_lossy().to_lowercase();
        let base = base.to_string_lossy().to_lowercase();
        let named = name == base
            || ["-wal", "-shm", "-journal"]
                .iter()
                .any(|suffix| name.strip_prefix(base.as_str()) == Some(suffix));
        if !named {
            return false;
        }
        // In the database's directory (by identity: any path to it)? When either cannot be
        // told, the name alone decides.
        let dir = |p: &Path| {
            let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
            std::fs::metadata(parent.unwrap_or(Path::new(".")))
                .ok()
                .map(|m| FileId::of(&m))
        };
        match (dir(path), dir(db)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    fn refuse(&self, path: &Path, meta: Option<&std::fs::Metadata>) -> io::Result<()> {
        if self.names_the_database(path) || meta.is_some_and(|m| self.ids.contains(&FileId::of(m)))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: it is the database (or one of its files); choose another file",
                    path.display()
                ),
            ));
        }
        Ok(())
    }
}

fn named(path: &Path, e: io::Error) -> io::Error {
    let what = match e.raw_os_error() {
        Some(libc::ELOOP) => {
            "it is a symbolic link; pim does not write through links, so name the file itself"
                .to_string()
        }
        _ => e.to_string(),
    };
    io::Error::new(e.kind(), format!("{}: {what}", path.display()))
}

/// Open a file the caller named for reading, with the caller's own rights.
pub fn open_read(path: &Path) -> io::Result<File> {
    drop_for_good();
    File::open(path).map_err(|e| named(path, e))
}

/// Read a file the caller named, with the caller's own rights, refusing more than `limit`
/// bytes.
pub fn read_to_string(path: &Path, limit: u64) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    open_read(path)?
        .take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| named(path, e))?;
    if text.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is larger than {} KiB, the most pim reads",
                path.display(),
                limit / 1024
            ),
        ));
    }
    Ok(text)
}

/// Read all of a file the caller named (a pipe too), with the caller's own rights,
/// refusing more than `limit` bytes.
pub fn read_all(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_read(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| named(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is larger than {} MiB, the most pim reads",
                path.display(),
                limit / (1024 * 1024)
            ),
        ));
    }
    Ok(bytes)
}

/// Create (or replace the contents of) a file the caller named, with the caller's own
/// rights, never through a symbolic link, and never one of `protect` (the database and its
/// companion files). A new file gets mode 0600. An existing one must be the caller's, root
/// included (another account's file keeps its owner and mode, so whoever planted it, 0666 in
/// /tmp, would read what root wrote), and of one name (a second name, made by another
/// account, would be a way back to it).
pub fn create_output(path: &Path, protect: &Protected) -> io::Result<File> {
    drop_for_good();
    // Before anything is created: a companion's name is refused whether it is there or not.
    protect.refuse(path, None)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| named(path, e))?;
    let meta = file.metadata()?;
    if meta.uid() != real_uid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: it belongs to another account; pim writes only files of your own",
                path.display()
            ),
        ));
    }
    if meta.nlink() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: it has more than one name (a hard link); remove it, or choose another file",
                path.display()
            ),
        ));
    }
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: it is not a regular file", path.display()),
        ));
    }
    protect.refuse(path, Some(&meta))?;
    file.set_len(0)?;
    Ok(file)
}

/// Append to a file of the caller's (a witness's log): created 0600 if missing, never through
/// a link, never the database's, with the caller's own rights only.
pub fn append_output(path: &Path, protect: &Protected) -> io::Result<File> {
    drop_for_good();
    protect.refuse(path, None)?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| named(path, e))?;
    let meta = file.metadata()?;
    if (meta.uid() != real_uid() && real_uid() != 0)
        || !meta.file_type().is_file()
        || protect.refuse(path, Some(&meta)).is_err()
    {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: it is not a regular file of your own apart from the database",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// A child as [`command`] makes it, in a process group of its own (away from the caller's
/// terminal, and to be ended with everything it starts: kill the negative of its id).
pub fn command_alone(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = command(program);
    cmd.process_group(0);
    cmd
}

/// A directory of the caller's own for lock files (mode 0700, its parent must exist), made
/// with the caller's own rights (the group is raised only inside `with_group`).
pub fn make_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

/// A lock file in such a directory: made new (mode 0600) or opened as it is, never through
/// a link and only a regular file, with the caller's own rights.
pub fn lock_file(path: &Path, create: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    if create {
        options.write(true).create_new(true).mode(0o600);
    } else {
        options.read(true);
    }
    // Never a link, and never a wait: a FIFO put in its place would hold the open until a
    // writer came (O_NONBLOCK has no say in flock, which waits or not by its own flag).
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Remove such a lock file.
pub fn remove_lock_file(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// The names in such a directory (none where it cannot be read).
pub fn names_in(dir: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect()
        })
        .unwrap_or_default()
}

/// Create a directory (and its parents) the caller named, with the caller's own rights.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    drop_for_good();
    std::fs::create_dir_all(path).map_err(|e| named(path, e))
}

/// Make a pipe to a child non-blocking: a write that would wait returns `WouldBlock`
/// instead (left blocking if the flags cannot be changed).
pub fn set_nonblocking(pipe: &impl std::os::fd::AsRawFd) {
    let fd = pipe.as_raw_fd();
    // SAFETY: fcntl on a descriptor the caller holds open; it changes only its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_files_are_never_written_through_links_or_onto_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = create_output(&link, &Protected::none()).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");

        let id = FileId::of(&std::fs::metadata(&target).unwrap());
        let protect = Protected {
            ids: vec![id],
            db: Some(target.clone()),
        };
        let e = create_output(&target, &protect).unwrap_err();
        assert!(e.to_string().contains("database"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        // A companion SQLite would read beside the database, there or not, in any case,
        // by any path to its directory.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let back = sub.join("..");
        for name in [
            "target-journal",
            "target-WAL",
            "TARGET-shm",
            "Target",
            "target-wal",
        ] {
            for d in [dir.path(), back.as_path()] {
                let e = create_output(&d.join(name), &protect).unwrap_err();
                assert!(e.to_string().contains("database"), "{name}: {e}");
                let e = append_output(&d.join(name), &protect).unwrap_err();
                assert!(e.to_string().contains("database"), "{name}: {e}");
                assert!(!d.join(name).exists(), "{name} created");
            }
        }
        // The same names elsewhere, and other names here, are fine.
        create_output(&sub.join("target-journal"), &protect).unwrap();
        create_output(&dir.path().join("target-journal.csv"), &protect).unwrap();

        let new = dir.path().join("new.csv");
        create_output(&new, &protect).unwrap();
        let mode = std::fs::metadata(&new).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn reads_stop_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 4096]).unwrap();
        assert!(read_to_string(&big, 1024).is_err());
        assert_eq!(read_to_string(&big, 4096).unwrap().len(), 4096);
    }
}
