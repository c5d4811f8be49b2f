//! Leases of `pim exec` on the activations its commands run under, so that of several execs
//! relying on one activation the last to end gives it back, not the first.
//!
//! An exec that activates a role makes a lock file named after the activation in a directory
//! of the caller's own and holds it shared while its command runs; an exec that finds the
//! role held by such an activation holds that file shared too. At the end each lets go and
//! tries to hold it alone: the one that can is the last, deactivates, and removes the file.
//! An activation without a file (made by `pim activate`) is never an exec's to give back.
//! The leases are of one host: an exec on another host does not count.

use crate::privilege::{lock_file, make_private_dir, remove_lock_file};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// The caller's directory for the leases: `$XDG_RUNTIME_DIR/pim`, else `/tmp/pim-UID`; none
/// (and so no lease) when it is not a directory of the caller's that nobody else may enter.
fn dir() -> Option<PathBuf> {
    let uid = crate::privilege::real_uid();
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .map(|d| d.join("pim"))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("pim-{uid}")));
    let _ = make_private_dir(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == uid && meta.mode() & 0o077 == 0).then_some(dir)
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

fn path(dir: &std::path::Path, instance: &str, id: i64) -> PathBuf {
    dir.join(format!("exec-{instance}-{id}.lock"))
}

impl Lease {
    /// The lease of the exec that made activation `id`: None where leases cannot be kept
    /// (the exec then gives the activation back when its own command ends, as if alone).
    pub fn made(instance: &str, id: i64) -> Option<Lease> {
        let path = path(&dir()?, instance, id);
        let file = lock_file(&path, true).ok()?;
        lock(&file, libc::LOCK_SH).then_some(Lease { id, path, file })
    }

    /// A lease on activation `id`, which another exec made and holds: None when none did
    /// (or it has just given it back).
    pub fn join(instance: &str, id: i64) -> Option<Lease> {
        let path = path(&dir()?, instance, id);
        let file = lock_file(&path, false).ok()?;
        if !lock(&file, libc::LOCK_SH) {
            return None;
        }
        // The file may have been removed while we waited: its exec gave the activation back.
        let same = std::fs::symlink_metadata(&path)
            .ok()
            .zip(file.metadata().ok())
            .is_some_and(|(named, held)| named.ino() == held.ino() && named.dev() == held.dev());
        same.then_some(Lease { id, path, file })
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
