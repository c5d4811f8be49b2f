//! Signed checkpoints of the audit log in the formats transparency logs use: a C2SP
//! `tlog-checkpoint` body (origin, tree size, base64 root hash), signed as a C2SP
//! `signed-note` with Ed25519, so that existing witnesses and verifiers can read it.
//!
//! The signing key is derived from the database's key file (`vault::Vault::derive`): it lives
//! outside the database, readable by the pim group (installed) or the owner only. The
//! verifier key, `pim audit key`, is in note format: `NAME+KEYID+BASE64(0x01 ‖ public key)`.

use crate::error::{Error, Result};
use crate::merkle::Hash;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// The Ed25519 algorithm byte of signed notes.
const ED25519: u8 = 0x01;

/// The origin line (and key name) of a database's checkpoints.
pub fn origin(instance: &str) -> String {
    format!("pim.local/{instance}")
}

/// A checkpoint's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note's text: three lines, each ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }
}

/// A signer for checkpoints of one database.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

fn key_id(name: &str, public: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

impl NoteSigner {
    pub fn new(name: &str, seed: &[u8; 32]) -> NoteSigner {
        NoteSigner {
            name: name.to_string(),
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The verifier key in note format.
    pub fn verifier_key(&self) -> String {
        let public = self.key.verifying_key();
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(public.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(key_id(&self.name, &public)),
            B64.encode(bytes)
        )
    }

    /// The signed note of `checkpoint`.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        self.sign_text(&checkpoint.body())
    }

    /// A signed note of `body` (lines ending in newlines, no blank line).
    pub fn sign_text(&self, body: &str) -> String {
        let signature = self.key.sign(body.as_bytes());
        let mut sig = key_id(&self.name, &self.key.verifying_key()).to_vec();
        sig.extend_from_slice(&signature.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", self.name, B64.encode(sig))
    }
}

/// A verifier key in note format.
pub struct VerifierKey {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl VerifierKey {
    pub fn parse(text: &str) -> Result<VerifierKey> {
        let bad = || {
            Error::Usage(format!(
                "'{}' is not a verifier key (NAME+KEYID+KEY).",
                text.trim()
            ))
        };
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let id: [u8; 4] = hex::decode(id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        let key = B64.decode(key).map_err(|_| bad())?;
        if key.len() != 33 || key[0] != ED25519 {
            return Err(bad());
        }
        let key = VerifyingKey::from_bytes(&key[1..].try_into().map_err(|_| bad())?)
            .map_err(|_| bad())?;
        if key_id(name, &key) != id {
            return Err(bad());
        }
        Ok(VerifierKey {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// Check `note`'s signature by this key and read its checkpoint (whose origin must be
    /// the key's name).
    pub fn open(&self, note: &str) -> Result<Checkpoint> {
        let bad = |why: &str| Error::Refused(format!("The checkpoint is not valid: {why}."));
        let body = self.open_note(note)?;
        let mut lines = body.lines();
        let origin = lines.next().unwrap_or_default().to_string();
        if origin != self.name {
            return Err(bad("it is of another log"));
        }
        let size: u64 = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| bad("its size is not a number"))?;
        let root: Hash = lines
            .next()
            .and_then(|l| B64.decode(l).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("its root is not a SHA-256 hash"))?;
        Ok(Checkpoint { origin, size, root })
    }

    /// Check any signed note by this key; its text (with its final newline).
    pub fn open_note(&self, note: &str) -> Result<String> {
        let bad = |why: &str| Error::Refused(format!("The note is not valid: {why}."));
        let Some((body, signatures)) = note.rsplit_once("\n\n") else {
            return Err(bad("it is not a signed note"));
        };
        let body = format!("{body}\n");
        let mut verified = false;
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                continue;
            };
            let Some((name, sig)) = rest.rsplit_once(' ') else {
                continue;
            };
            // Other keys' signatures are not ours to read; one by this key's name must be
            // sound (as examples/verify_receipt.py holds it).
            if name != self.name {
                continue;
            }
            let malformed = || bad(&format!("a signature by {} is malformed", self.name));
            let sig = B64.decode(sig).map_err(|_| malformed())?;
            if sig.get(..4) != Some(&self.id[..]) {
                continue;
            }
            let signature = ed25519_dalek::Signature::from_slice(sig.get(4..).unwrap_or_default())
                .ok()
                .filter(|_| sig.len() == 68)
                .ok_or_else(malformed)?;
            if self.key.verify(body.as_bytes(), &signature).is_ok() {
                verified = true;
            } else {
                return Err(bad("its signature does not match its contents"));
            }
        }
        if !verified {
            return Err(bad(&format!("it carries no signature by {}", self.name)));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_opens_and_any_changed_byte_is_refused() {
        let signer = NoteSigner::new("pim.local/test", &[7u8; 32]);
        let cp = Checkpoint {
            origin: "pim.local/test".into(),
            size: 42,
            root: [9u8; 32],
        };
        let note = signer.sign(&cp);
        assert!(note.starts_with("pim.local/test\n42\n"));
        let key = VerifierKey::parse(&signer.verifier_key()).unwrap();
        assert_eq!(key.open(&note).unwrap(), cp);
        for i in 0..note.len() {
            let mut bytes = note.clone().into_bytes();
            bytes[i] ^= 0x01;
            if let Ok(changed) = String::from_utf8(bytes) {
                if changed != note {
                    assert!(key.open(&changed).is_err(), "byte {i}");
                }
            }
        }
        let other =
            VerifierKey::parse(&NoteSigner::new("pim.local/test", &[8u8; 32]).verifier_key())
                .unwrap();
        assert!(other.open(&note).is_err());
    }
}
