//! Leases of `pim exec` on the activations its commands run under, so that of several execs
//! relying on one activation the last to end gives it back, not the first.
//!
//! An exec that activates a role makes a lock file named after the activation (its number and
//! when it was made: a database restored from a copy gives its numbers again) in a directory
//! of the caller's own and holds it shared while its command runs; an exec that finds the
//! role held by such an activation holds that file shared too. At the end each lets go and
//! tries to hold it alone: the one that can is the last, deactivates, and removes the file.
//! An activation without a file (made by `pim activate`) is never an exec's to give back.
//! The leases are of one host: an exec on another host does not count.
//!
//! The file must exist before another exec can find the activation and rely on it: the
//! exec that activates holds the database's gate alone from before it activates until its
//! lease is made, and an exec looking for an activation to rely on holds the gate shared
//! while it looks and joins. Without the gate, an exec that found the role held in between
//! ran with no lease, and lost the role when the first exec ended.

use crate::privilege::{lock_file, make_private_dir, names_in, remove_lock_file};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The caller's directory for the leases: `$XDG_RUNTIME_DIR/pim` where that is the caller's
/// (root's exec after `su` must not make it root's), else `/tmp/pim-UID`; an error (and so no
/// lease) when it is not a directory of the caller's that nobody else may enter.
fn dir() -> Result<PathBuf, String> {
    let uid = crate::privilege::real_uid();
    let own = |d: &std::path::Path| {
        std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir() && m.uid() == uid)
    };
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && own(d))
        .map(|d| d.join("pim"))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/pim-{uid}")));
    let _ = make_private_dir(&dir);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0 => Ok(dir),
        _ => Err(format!(
            "{} is not a directory of yours alone, so this exec keeps no lease: another exec relying on its activation loses the role when this one ends.",
            dir.display()
        )),
    }
}

/// The name the leases of one database's activations share: its instance id and where it
/// is (a copy of a database keeps the instance id, and its request ids run alike).
pub fn key(instance: &str, location: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{instance}\n{location}").as_bytes());
    hex::encode(&digest[..12])
}

/// One exec's hold on activation `id` of database `instance`.
pub struct Lease {
    pub id: i64,
    path: PathBuf,
    file: File,
}

fn lock(file: &File, how: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), how) == 0 }
}

fn path(dir: &std::path::Path, key: &str, id: i64, made: i64) -> PathBuf {
    dir.join(format!("exec-{key}-{id}-{made}.lock"))
}

/// The gate of one database's leases (see the module's note), held until dropped.
pub struct Gate {
    _file: File,
}

impl Gate {
    /// Held shared: by an exec that looks for activations to rely on.
    pub fn shared(key: &str) -> Result<Option<Gate>, String> {
        Gate::held(key, libc::LOCK_SH)
    }

    /// Held alone: by an exec from before it activates until its lease is made.
    pub fn alone(key: &str) -> Result<Option<Gate>, String> {
        Gate::held(key, libc::LOCK_EX)
    }

    /// None where leases cannot be kept (then there is nothing to keep apart); why not,
    /// where they are kept but the gate cannot be held (something else in its place).
    fn held(key: &str, how: libc::c_int) -> Result<Option<Gate>, String> {
        let Ok(dir) = dir() else { return Ok(None) };
        let path = dir.join(format!("exec-{key}.gate"));
        // Made by the first exec that needs it, and kept.
        let file = match lock_file(&path, false) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                lock_file(&path, true).or_else(|_| lock_file(&path, false))
            }
            other => other,
        };
        let cannot = |e: &dyn std::fmt::Display| {
            format!(
                "cannot hold {} ({e}), so this exec and another starting at the same moment may not see each other's activation: remove it.",
                path.display()
            )
        };
        let file = file.map_err(|e| cannot(&e))?;
        if lock(&file, how) {
            Ok(Some(Gate { _file: file }))
        } else {
            Err(cannot(&std::io::Error::last_os_error()))
        }
    }
}

impl Lease {
    /// The lease of the exec that made activation `id`; why not, where leases cannot be
    /// kept (the exec then gives the activation back when its own command ends, as if alone).
    pub fn made(key: &str, id: i64, made: i64) -> Result<Lease, String> {
        let path = path(&dir()?, key, id, made);
        let file = lock_file(&path, true)
            .map_err(|e| format!("cannot keep a lease in {}: {e}.", path.display()))?;
        if lock(&file, libc::LOCK_SH) {
            Ok(Lease { id, path, file })
        } else {
            Err(format!("cannot lock {}.", path.display()))
        }
    }

    /// A lease on activation `id`, which another exec made and holds: None when none did
    /// (or it has just given it back).
    pub fn join(key: &str, id: i64, made: i64) -> Option<Lease> {
        let path = path(&dir().ok()?, key, id, made);
        let file = lock_file(&path, false).ok()?;
        if !lock(&file, libc::LOCK_SH) {
            return None;
        }
        // The file may have been removed while we waited: its exec gave the activation back.
        same(&path, &file).then_some(Lease { id, path, file })
    }

    /// Let go: the activation is this exec's to give back when no other exec holds it any
    /// more. It then holds the file alone until [`Last::done`], so that an exec about to join
    /// waits, and finds the activation ended.
    pub fn release(self) -> Option<Last> {
        lock(&self.file, libc::LOCK_UN);
        lock(&self.file, libc::LOCK_EX | libc::LOCK_NB).then_some(Last {
            path: self.path,
            _file: self.file,
        })
    }
}

/// Remove the lease files of this database's activations that no exec holds and that are
/// no longer in force (ended on their own, or by `pim deactivate`, after their exec was
/// killed). One still in force stays: the next exec relying on it gives it back. `in_force`
/// is asked before the file is held, and again while it is held alone: an exec letting go of
/// its lease (which then tries to hold the file alone) must never find it held by this
/// cleaning, for it would take another exec to be relying on its activation and not give it
/// back; and an exec making its lease (after its activation) is never taken for a stale one.
pub fn clean(key: &str, in_force: impl Fn(i64, Option<i64>) -> bool) {
    let Ok(dir) = dir() else { return };
    let prefix = format!("exec-{key}-");
    for name in names_in(&dir) {
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".lock"))
        else {
            continue;
        };
        // ID-MADE; or ID alone, as execs before stop 35 named them.
        let (id, made) = match rest.split_once('-') {
            Some((id, made)) => (id.parse::<i64>().ok(), made.parse::<i64>().ok().map(Some)),
            None => (rest.parse::<i64>().ok(), Some(None)),
        };
        let (Some(id), Some(made)) = (id, made) else {
            continue;
        };
        if in_force(id, made) {
            continue;
        }
        let path = dir.join(&name);
        let Ok(file) = lock_file(&path, false) else {
            continue;
        };
        if lock(&file, libc::LOCK_EX | libc::LOCK_NB) && same(&path, &file) && !in_force(id, made) {
            remove_lock_file(&path);
        }
    }
}

/// Whether `path` still names the file held open.
fn same(path: &std::path::Path, file: &File) -> bool {
    std::fs::symlink_metadata(path)
        .ok()
        .zip(file.metadata().ok())
        .is_some_and(|(named, held)| named.ino() == held.ino() && named.dev() == held.dev())
}

/// The last exec's hold on an activation it is giving back.
pub struct Last {
    path: PathBuf,
    _file: File,
}

impl Last {
    /// The activation is given back: the file goes, then the hold.
    pub fn done(self) {
        remove_lock_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn copies_of_a_database_keep_leases_apart() {
        let a = super::key("0123456789abcdef0123456789abcdef", "/srv/a/pim.db");
        let b = super::key("0123456789abcdef0123456789abcdef", "/srv/b/pim.db");
        assert_ne!(a, b);
        assert_eq!(
            a,
            super::key("0123456789abcdef0123456789abcdef", "/srv/a/pim.db")
        );
    }
}
