//! TOTP secrets at rest. Each database has a random instance id (in `meta`) and a 256-bit
//! key in a file outside it: `/etc/pim/keys/ID.key` for the installed database (root:pim,
//! 0640, created by `pim init` as root), `$XDG_CONFIG_HOME/pim/keys/ID.key` (0600) for a
//! personal one. Secrets are sealed with XChaCha20-Poly1305, a fresh nonce each, bound to
//! their user's name, so a copy of the database or of its backups reveals none of them.
//! A key file may go on with `server IDENTITY` lines: the PostgreSQL servers, named with
//! `--db`, for which the key may be used (`bind`; a file's owner is its own binding).

use crate::error::{Error, Result};
use crate::privilege;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Where the installed database's key lives (never taken from the environment).
pub const SYSTEM_KEYS: &str = "/etc/pim/keys";

/// The prefix of a sealed secret in the `users.totp_secret` column.
const SEALED: &str = "enc1:";

/// The key of one database, or why there is none.
pub struct Vault {
    key: std::sync::OnceLock<Zeroizing<[u8; 32]>>,
    /// Where the key was looked for (for messages).
    wanted: PathBuf,
    /// When the key is missing and may be made on first use: the instance, for the
    /// installed database the pim group, and the server it is made for.
    create: Option<(String, Option<u32>, Option<String>)>,
    /// Why no key was looked for at all (`Vault::not_yours`).
    withheld: Option<String>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("key", &self.key.get().map(|_| "[redacted]"))
            .field("wanted", &self.wanted)
            .finish()
    }
}

/// The key file of a database: the installed one only under `/etc/pim/keys`, a personal one
/// first in the caller's configuration directory.
pub fn key_paths(instance: &str, installed: bool) -> Vec<PathBuf> {
    let name = format!("{instance}.key");
    let system = Path::new(SYSTEM_KEYS).join(&name);
    if installed {
        return vec![system];
    }
    // A relative value is not a place (the XDG base directory specification says to ignore
    // it): it would name a different key in every working directory.
    let absolute = |v: &std::ffi::OsString| Path::new(v).is_absolute();
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(absolute)
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(absolute)
                .map(|h| PathBuf::from(h).join(".config"))
        });
    let mut out: Vec<PathBuf> = config
        .map(|c| c.join("pim").join("keys").join(&name))
        .into_iter()
        .collect();
    out.push(system);
    out
}

fn valid_instance(instance: &str) -> Result<()> {
    if instance.len() == 32 && instance.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Error::Environment(
            "The database's instance id is damaged; restore the database from a backup."
                .to_string(),
        ))
    }
}

/// A key file: the key, on its first line, then a `server IDENTITY` line for each
/// PostgreSQL server the key may be used for (`pg::identity`).
struct KeyFile {
    key: Zeroizing<[u8; 32]>,
    servers: Vec<String>,
}

fn parse_key(text: &str) -> Option<KeyFile> {
    let mut lines = text.lines();
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(lines.next()?.trim(), key.as_mut_slice()).ok()?;
    let mut servers = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        servers.push(line.strip_prefix("server ")?.trim().to_string());
    }
    Some(KeyFile { key, servers })
}

/// The key file's text: the key, then the servers it is bound to.
fn key_text(key: &[u8; 32], servers: &[String]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(format!("{}\n", hex::encode(key)));
    for server in servers {
        text.push_str(&format!("server {server}\n"));
    }
    text
}

/// How a key found for a PostgreSQL server named by the caller is refused when it is not
/// bound to that server.
fn not_bound(path: &Path, server: &str) -> String {
    format!(
        "The key {} is not bound to the server {server}: any server can name your database's instance id, so pim uses a key (its TOTP secrets, its signed checkpoints and receipts) only for the servers it was bound to, by `pim init` or `pim store copy` there. If this server holds your database, bind the key to it with `pim store bind-key` (--db naming it as here).",
        path.display()
    )
}

impl Vault {
    /// A vault with a fresh key that lives only in memory (tests).
    pub fn ephemeral() -> Vault {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut_slice())
            .expect("the operating system's random number generator failed");
        Vault::with_key(key, PathBuf::from("(memory)"))
    }

    /// Find and read the key of database `instance`. A missing key is not an error until a
    /// secret is needed; a key file that others could read or change is. `server`: the
    /// identity of a PostgreSQL server the caller named (not the installed one), for which
    /// a key is used only where it is bound to it ([`bind`]).
    ///
    /// `readers`: the group that may read a key under `/etc/pim/keys` besides root when this
    /// is not the installed pim (the database file's group: who may read the database
    /// anyway); None for a server.
    pub fn load(
        instance: &str,
        installed: bool,
        server: Option<&str>,
        readers: Option<u32>,
    ) -> Result<Vault> {
        valid_instance(instance)?;
        let paths = key_paths(instance, installed);
        for path in &paths {
            let read = if installed {
                privilege::with_group(|| read_key(path, installed, None))?
            } else {
                read_key(path, installed, readers)
            };
            if let Some(file) = read? {
                if let Some(server) = server.filter(|s| !file.servers.iter().any(|b| b == s)) {
                    return Ok(Vault::not_yours(not_bound(path, server)));
                }
                return Ok(Vault::with_key(file.key, path.clone()));
            }
        }
        Ok(Vault {
            key: std::sync::OnceLock::new(),
            wanted: paths[0].clone(),
            create: None,
            withheld: None,
        })
    }

    fn with_key(key: Zeroizing<[u8; 32]>, wanted: PathBuf) -> Vault {
        let cell = std::sync::OnceLock::new();
        let _ = cell.set(key);
        Vault {
            key: cell,
            wanted,
            create: None,
            withheld: None,
        }
    }

    /// No key, for a database that is not the caller's: a key is found by the instance id
    /// the database names, which anyone can copy into a file of their own, and whoever holds
    /// the key of that id would then seal with it and sign that file's log. `why` says so.
    pub fn not_yours(why: String) -> Vault {
        Vault {
            key: std::sync::OnceLock::new(),
            wanted: PathBuf::new(),
            create: None,
            withheld: Some(why),
        }
    }

    /// Let a missing key be created when a secret is first sealed (by whoever could write
    /// the database directly: `group` for the installed one, whose creator is root).
    pub fn create_when_needed(&mut self, instance: &str, group: Option<u32>, server: Option<&str>) {
        self.create = Some((instance.to_string(), group, server.map(str::to_string)));
    }

    /// Create the key file of database `instance` (refusing to replace one). For the
    /// installed database `group` is the pim group and the caller is root. A key made for a
    /// server the caller named is bound to it (`server`, its `pg::identity`).
    pub fn create(instance: &str, group: Option<u32>, server: Option<&str>) -> Result<Vault> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        valid_instance(instance)?;
        let path = key_paths(instance, group.is_some())[0].clone();
        // A personal key goes to the caller's configuration directory; without one (no
        // absolute HOME or XDG_CONFIG_HOME) it would go where the installed keys are.
        if group.is_none() && path.parent() == Some(Path::new(SYSTEM_KEYS)) {
            return Err(Error::Environment(format!(
                "Cannot create the key file of this database: neither XDG_CONFIG_HOME nor HOME is an absolute path, so there is no configuration directory of yours to keep it in (pim keeps {} for the installed database). Set HOME.",
                SYSTEM_KEYS
            )));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let fail = |e: std::io::Error| {
            Error::Environment(format!(
                "Cannot create the key file {}: {e}.",
                path.display()
            ))
        };
        if !dir.exists() {
            // /etc/pim stays readable like any configuration directory. /etc/pim/keys can
            // be passed through but not listed; each key file belongs to its install's group,
            // so installs of different groups can share it.
            if let Some(parent) = dir.parent().filter(|p| !p.exists()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(if group.is_some() { 0o755 } else { 0o700 })
                    .create(parent)
                    .map_err(fail)?;
            }
            std::fs::DirBuilder::new()
                .mode(if group.is_some() { 0o711 } else { 0o700 })
                .create(dir)
                .map_err(fail)?;
        }
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut_slice())
            .expect("the operating system's random number generator failed");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(fail)?;
        if let Some(g) = group {
            std::os::unix::fs::fchown(&file, Some(0), Some(g)).map_err(fail)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o640))
                .map_err(fail)?;
        }
        let servers: Vec<String> = server.map(str::to_string).into_iter().collect();
        let text = key_text(&key, &servers);
        file.write_all(text.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        Ok(Vault::with_key(key, path))
    }

    pub fn has_key(&self) -> bool {
        self.key.get().is_some()
    }

    /// Whether secrets can be sealed: the key is here, or may be made.
    pub fn usable(&self) -> bool {
        self.withheld.is_none() && (self.has_key() || self.create.is_some())
    }

    /// Why this database gets no key of the caller's (another account's file, a server the
    /// key is not bound to), if so.
    pub fn withheld(&self) -> Option<&str> {
        self.withheld.as_deref()
    }

    pub fn path(&self) -> &Path {
        &self.wanted
    }

    fn cipher(&self) -> Result<XChaCha20Poly1305> {
        Ok(XChaCha20Poly1305::new(self.key()?.as_slice().into()))
    }

    /// A 256-bit secret for `purpose`, derived from the database's key (so that, like the
    /// key, it lives outside the database, readable by the pim group or the owner only):
    /// SHA-256 of a label naming the purpose, then the key.
    pub fn derive(&self, purpose: &str) -> Result<Zeroizing<[u8; 32]>> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(format!("pim key derivation: {purpose}\n").as_bytes());
        h.update(self.key()?.as_slice());
        Ok(Zeroizing::new(h.finalize().into()))
    }

    fn key(&self) -> Result<&Zeroizing<[u8; 32]>> {
        if let Some(why) = &self.withheld {
            return Err(Error::Refused(why.clone()));
        }
        if self.key.get().is_none() {
            if let Some((instance, group, server)) = &self.create {
                let made = Vault::create(instance, *group, server.as_deref())?;
                if let Some(key) = made.key.into_inner() {
                    let _ = self.key.set(key);
                }
            }
        }
        self.key.get().ok_or_else(|| {
            Error::Environment(format!(
                "The key that protects this database's TOTP secrets is missing (expected at {}). Restore it from your key backup; as root, `pim audit verify` creates it for a database that has none yet.",
                self.wanted.display()
            ))
        })
    }

    /// Seal `secret` for `user`.
    pub fn seal(&self, user: &str, secret: &[u8]) -> Result<String> {
        let cipher = self.cipher()?;
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).expect("the operating system's random number generator failed");
        let aad = format!("pim totp {user}");
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| Error::Environment("Cannot seal a TOTP secret.".to_string()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{SEALED}{}", hex::encode(out)))
    }

    /// Open `user`'s stored secret: a sealed one with the key, a plain one (from before
    /// sealing) as it is.
    pub fn open(&self, user: &str, stored: &str) -> Result<Zeroizing<Vec<u8>>> {
        let Some(hexed) = stored.strip_prefix(SEALED) else {
            return crate::mfa::from_base32(stored)
                .map(Zeroizing::new)
                .ok_or_else(|| damaged(user));
        };
        let bytes = hex::decode(hexed).map_err(|_| damaged(user))?;
        if bytes.len() < 24 + 16 {
            return Err(damaged(user));
        }
        let (nonce, sealed) = bytes.split_at(24);
        let aad = format!("pim totp {user}");
        self.cipher()?
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| damaged(user))
    }

    /// Whether a stored secret is sealed.
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEALED)
    }
}

/// Remove the key file `create` made for a database that was not finished.
pub fn discard(instance: &str, installed: bool) {
    if valid_instance(instance).is_ok() {
        let _ = std::fs::remove_file(&key_paths(instance, installed)[0]);
    }
}

fn damaged(user: &str) -> Error {
    Error::Environment(format!(
        "{user}'s TOTP secret cannot be opened with this database's key (a wrong key file, or a changed row). Check the key file, or run `pim mfa reset {user}` and enrol again."
    ))
}

/// Bind the key of database `instance` (the caller's: found as [`Vault::load`] finds a
/// personal one) to the server `server` (its `pg::identity`), so that pim uses the key for
/// that server. The file is written anew beside itself and renamed over, with its owner,
/// group and mode. Returns the key file, and whether the key was bound there already; none
/// when the caller has no key of this database.
pub fn bind(instance: &str, server: &str) -> Result<Option<(PathBuf, bool)>> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    valid_instance(instance)?;
    if server.is_empty() || server.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Usage(format!(
            "{} cannot be written into a key file.",
            server.escape_debug()
        )));
    }
    for path in key_paths(instance, false) {
        let Some(mut file) = read_key(&path, false, None)? else {
            continue;
        };
        if file.servers.iter().any(|s| s == server) {
            return Ok(Some((path, true)));
        }
        file.servers.push(server.to_string());
        let fail = |e: std::io::Error| {
            Error::Environment(format!("Cannot bind the key {}: {e}.", path.display()))
        };
        let meta = std::fs::symlink_metadata(&path).map_err(fail)?;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.new", std::process::id()));
        let fresh = path.with_file_name(name);
        let written = (|| -> std::io::Result<()> {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&fresh)?;
            let made = out.metadata()?;
            if made.uid() != meta.uid() || made.gid() != meta.gid() {
                std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()))?;
            }
            out.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o640))?;
            out.write_all(key_text(&file.key, &file.servers).as_bytes())?;
            out.sync_all()?;
            std::fs::rename(&fresh, &path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&fresh);
            return Err(fail(e));
        }
        return Ok(Some((path, false)));
    }
    Ok(None)
}

/// Read a key file if it exists. The installed key must belong to root and the pim group,
/// and nobody else may read or change it; a personal one only its owner; root's under
/// `/etc/pim/keys`, read by another pim, root and `readers` alone.
fn read_key(path: &Path, installed: bool, readers: Option<u32>) -> Result<Option<KeyFile>> {
    read_key_in(path, installed, readers, Path::new(SYSTEM_KEYS))
}

fn read_key_in(
    path: &Path,
    installed: bool,
    readers: Option<u32>,
    system_keys: &Path,
) -> Result<Option<KeyFile>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Environment(format!(
                "Cannot read the key file {}: {e}.",
                path.display()
            )))
        }
    };
    let meta = file.metadata()?;
    // A personal key is the caller's own (or root's, under /etc/pim/keys): one another
    // account put where the caller's configuration points would be a key they know.
    let owner = meta.uid();
    let system = owner == 0 && path.parent() == Some(system_keys);
    if !installed && owner != privilege::real_uid() && !system {
        return Err(Error::Environment(format!(
            "The key file {} belongs to {}, not you: pim uses only a key file of your own. Move it away, or run as its owner.",
            path.display(),
            privilege::account_name(owner).unwrap_or_else(|| format!("uid {owner}"))
        )));
    }
    // Root's keys under /etc/pim/keys are read through their group (root:pim 0640): by the
    // installed pim, and by another for a database file only where that group is the file's
    // own (a key readable by just any group is a key its members know; for a server, whose
    // keys count only where root bound them to it, `readers` is None); any other key by its
    // owner alone.
    let group_reads = installed || (system && readers.is_none_or(|g| g == meta.gid()));
    let unsafe_file = !meta.is_file()
        || meta.mode() & if group_reads { 0o037 } else { 0o077 } != 0
        || (installed && (meta.uid() != 0 || Some(meta.gid()) != privilege::installed_group()));
    if unsafe_file {
        let readers = readers
            .filter(|_| system && !installed)
            .map(|g| privilege::group_name(g).unwrap_or_else(|| g.to_string()));
        return Err(Error::Environment(match readers {
            Some(group) => format!(
                "The key file {1} may be read or changed by others; root's key must be a regular file that only root and the database's group ({0}) can read (chgrp {0} and chmod 0640 it, or chmod 0600 it).",
                crate::text::shell_word(Path::new(&group)),
                path.display(),
            ),
            None => format!(
                "The key file {} may be read or changed by others; it must be a regular file that only {} can read (chmod {} it).",
                path.display(),
                if group_reads { "root and the pim group" } else { "its owner" },
                if group_reads { "0640" } else { "0600" }
            ),
        }));
    }
    // Nor may another account remove, rename or replace it: every directory above it is its
    // owner's or root's, and writable by no one else (a sticky one, as /tmp, above its own).
    // Both the directories as named and as they really are: a link on the way (a linked
    // ~/.config) leads into directories the names do not show.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let shared = crate::store::shared_dir(dir, 0, owner).and_then(|named| match named {
        Some(d) => Ok(Some(d)),
        None => crate::store::shared_dir(&std::fs::canonicalize(dir)?, 0, owner),
    });
    match shared {
        Ok(None) => {}
        Ok(Some(d)) => {
            // Another account's directory is not fixed by a chmod: it must change hands.
            let word = crate::text::shell_word(&d);
            let theirs = std::fs::metadata(&d).is_ok_and(|m| m.uid() != owner && m.uid() != 0);
            let fix = if theirs {
                format!(
                    "chown {} {word}, then chmod go-w {word}",
                    crate::text::shell_word(Path::new(
                        &privilege::account_name(owner).unwrap_or_else(|| owner.to_string())
                    ))
                )
            } else {
                format!("chmod go-w {word}")
            };
            return Err(Error::Environment(format!(
                "The key file {} lies in {}, which other accounts may change (they could remove or replace the key); make it yours and writable by you alone ({fix}).",
                path.display(),
                d.display(),
            )));
        }
        Err(e) => {
            return Err(Error::Environment(format!(
                "Cannot check the directories of the key file {}: {e}.",
                path.display()
            )))
        }
    }
    let mut text = Zeroizing::new(String::new());
    file.by_ref().take(64 * 1024).read_to_string(&mut text)?;
    parse_key(&text).map(Some).ok_or_else(|| {
        Error::Environment(format!(
            "The key file {} is damaged; restore it from your key backup.",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_for_their_user_and_key() {
        let vault = Vault::ephemeral();
        let secret = b"12345678901234567890";
        let sealed = vault.seal("alice", secret).unwrap();
        assert!(Vault::is_sealed(&sealed));
        assert!(!sealed.contains(&crate::mfa::to_base32(secret)));
        assert_eq!(vault.open("alice", &sealed).unwrap().as_slice(), secret);
        // Moved to another user's row, or under another key: refused.
        assert!(vault.open("bob", &sealed).is_err());
        assert!(Vault::ephemeral().open("alice", &sealed).is_err());
        // A changed byte is found.
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'0' { b'1' } else { b'0' };
        assert!(vault
            .open("alice", &String::from_utf8(bytes).unwrap())
            .is_err());
        // Plain secrets from before sealing still open.
        let plain = crate::mfa::to_base32(secret);
        assert_eq!(vault.open("alice", &plain).unwrap().as_slice(), secret);
    }

    #[test]
    fn key_files_are_private_and_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_key(&path, false, None).err().unwrap();
            assert!(e.to_string().contains("chmod 0600"), "{mode:o}: {e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key(&path, false, None).unwrap().is_some());
        // A directory above it that others may write: they could remove or replace the key.
        for mode in [0o777, 0o770, 0o1777] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_key(&path, false, None).err().unwrap();
            assert!(
                e.to_string().contains("other accounts may change"),
                "{mode:o}: {e}"
            );
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(read_key(&path, false, None).unwrap().is_some());
        assert!(read_key(&dir.path().join("none"), false, None)
            .unwrap()
            .is_none());
        // Another account's key file is not taken for the caller's (root can show it).
        if privilege::real_uid() == 0 {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let e = read_key(&path, false, None).err().unwrap();
            assert!(e.to_string().contains("not you"), "{e}");
            std::os::unix::fs::chown(&path, Some(0), None).unwrap();
            assert!(read_key(&path, false, None).unwrap().is_some());
            // A directory of another account's: a chmod does not fix that, a chown does.
            std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
            let e = read_key(&path, false, None).err().unwrap().to_string();
            assert!(e.contains("chown root") && e.contains("chmod go-w"), "{e}");
            std::os::unix::fs::chown(dir.path(), Some(0), None).unwrap();
        }
        assert!(Vault::load("../../etc/passwd", false, None, None).is_err());
    }

    #[test]
    fn a_linked_key_directory_is_checked_where_it_leads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        let keys = open.join("cfg").join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let path = keys.join("k.key");
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // ~/.config a link into a directory that everyone may change.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::symlink(open.join("cfg"), home.join(".config")).unwrap();
        let linked = home.join(".config").join("keys").join("k.key");
        let e = read_key(&linked, false, None).err().unwrap();
        assert!(
            e.to_string().contains("other accounts may change") && e.to_string().contains("open"),
            "{e}"
        );
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(read_key(&linked, false, None).unwrap().is_some());
    }

    #[test]
    fn roots_key_is_read_through_the_databases_group_alone() {
        use std::os::unix::fs::PermissionsExt;
        if privilege::real_uid() != 0 {
            return; // only root can make a key of root's with another group
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let path = dir.path().join("k.key");
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(&path, Some(0), Some(65534)).unwrap();
        let read = |readers| read_key_in(&path, false, readers, dir.path());
        // Readable by a group that is not the database's: refused, with what fixes it.
        let e = read(Some(0)).err().unwrap().to_string();
        assert!(e.contains("chgrp root") && e.contains("chmod 0600"), "{e}");
        // The database's own group, or nobody's: taken.
        assert!(read(Some(65534)).unwrap().is_some());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(Some(0)).unwrap().is_some());
        // Outside the keys directory it is a personal key (root's own here): its owner's alone.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_key_in(&path, false, Some(65534), Path::new("/nowhere")).is_err());
    }

    #[test]
    fn a_key_serves_a_named_server_only_once_bound_to_it() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("XDG_CONFIG_HOME", dir.path());
        let instance = "0123456789abcdef0123456789abcdef";
        let (here, there) = ("postgres://db.example:5432/pim", "postgres://evil:5432/pim");
        // Nothing to bind yet.
        assert!(bind(instance, here).unwrap().is_none());
        let made = Vault::create(instance, None, Some(here)).unwrap();
        let path = made.path().to_path_buf();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().nth(1), Some(format!("server {here}").as_str()));
        let key = made.derive("t").unwrap();
        // The server it was made for, and a file, get the key; another server does not.
        assert_eq!(
            *Vault::load(instance, false, Some(here), None)
                .unwrap()
                .derive("t")
                .unwrap(),
            *key
        );
        assert_eq!(
            *Vault::load(instance, false, None, None)
                .unwrap()
                .derive("t")
                .unwrap(),
            *key
        );
        let refused = Vault::load(instance, false, Some(there), None).unwrap();
        let e = refused.derive("t").unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{e}");
        assert!(
            e.to_string()
                .contains("not bound to the server postgres://evil"),
            "{e}"
        );
        // Bound, it is served there too; the key and its mode are what they were.
        assert_eq!(bind(instance, there).unwrap(), Some((path.clone(), false)));
        assert_eq!(bind(instance, there).unwrap(), Some((path.clone(), true)));
        assert_eq!(
            *Vault::load(instance, false, Some(there), None)
                .unwrap()
                .derive("t")
                .unwrap(),
            *key
        );
        assert_eq!(
            *Vault::load(instance, false, Some(here), None)
                .unwrap()
                .derive("t")
                .unwrap(),
            *key
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        // Nothing but a server's identity goes in, on a line of its own.
        assert!(bind(instance, "a\nserver b").is_err());
        assert!(bind(instance, "").is_err());
        // A line that is not a server's is a damaged file, not an unbound key.
        std::fs::write(&path, format!("{}\nsomething else\n", "ab".repeat(32))).unwrap();
        assert!(Vault::load(instance, false, Some(here), None).is_err());
        std::env::remove_var("XDG_CONFIG_HOME");
    }
}
