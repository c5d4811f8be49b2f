//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of skew) for proving the human.
//! Replay and lockout need the database and live in the operations; this module only does
//! the arithmetic, through totp-rs.

use totp_rs::{Builder, Secret, Totp};

/// The issuer shown in authenticator apps.
pub const ISSUER: &str = "pim";

/// Consecutive wrong codes before each lock of the authenticator.
pub const MAX_FAILURES: i64 = 5;

/// How long the first lock lasts; each later one lasts twice as long as the one before.
pub const LOCK_SECONDS: i64 = 15 * 60;

/// The longest a single lock lasts.
pub const MAX_LOCK_SECONDS: i64 = 24 * 3600;

/// Consecutive wrong codes after which the authenticator stays locked until `pim mfa reset`
/// (NIST SP 800-63B allows at most 100).
pub const BLOCK_AFTER: i64 = 100;

/// How long the `n`th lock (1, 2, ...) of a run of wrong codes lasts.
pub fn lock_seconds(n: i64) -> i64 {
    let doublings = (n - 1).clamp(0, 20) as u32;
    (LOCK_SECONDS << doublings).min(MAX_LOCK_SECONDS)
}

/// 160 random bits, as the contract asks.
pub fn new_secret() -> Vec<u8> {
    let mut bytes = vec![0u8; 20];
    // getrandom only fails when the OS has no entropy source at all; pim cannot work then.
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    bytes
}

pub fn to_base32(secret: &[u8]) -> String {
    Secret::from(secret.to_vec()).to_base32()
}

pub fn from_base32(text: &str) -> Option<Vec<u8>> {
    Secret::try_from_base32(text)
        .ok()
        .map(|s| s.as_ref().to_vec())
}

fn totp(secret: &[u8], account: &str) -> Option<Totp> {
    Builder::new()
        .with_secret(secret.to_vec())
        .with_account_name(account)
        .with_issuer(Some(ISSUER))
        .build()
        .ok()
}

/// The `otpauth://` URI that authenticator apps accept.
pub fn otpauth_uri(secret: &[u8], account: &str) -> Option<String> {
    totp(secret, account)?.to_url().ok()
}

/// The code at a unix time (for tests and for the `oathtool` comparison).
pub fn code_at(secret: &[u8], unix: i64) -> String {
    totp(secret, "x")
        .map(|t| t.generate(unix.max(0) as u64).to_string())
        .unwrap_or_default()
}

/// The time step a code matches at `unix`, within one step of skew, if any.
pub fn matching_step(secret: &[u8], code: &str, unix: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    totp(secret, "x")?
        .check(code, unix.max(0) as u64)
        .map(|step| step as i64)
}

/// A QR code of the URI drawn with Unicode half blocks, for a terminal.
pub fn qr_text(uri: &str) -> String {
    use qrcode::render::unicode::Dense1x2;
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => code
            .render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vector() {
        // RFC 6238 appendix B, SHA-1, truncated to 6 digits.
        let secret = b"12345678901234567890";
        assert_eq!(code_at(secret, 59), "287082");
        assert_eq!(code_at(secret, 1_111_111_109), "081804");
    }

    #[test]
    fn one_step_of_skew_and_no_more() {
        let secret = new_secret();
        assert_eq!(secret.len(), 20);
        let t = 1_800_000_000;
        let code = code_at(&secret, t);
        assert_eq!(matching_step(&secret, &code, t), Some(t / 30));
        assert_eq!(matching_step(&secret, &code, t + 30), Some(t / 30));
        assert_eq!(matching_step(&secret, &code, t - 30), Some(t / 30));
        assert_eq!(matching_step(&secret, &code, t + 90), None);
        assert_eq!(matching_step(&secret, "12345", t), None);
        assert_eq!(matching_step(&secret, "abcdef", t), None);
    }

    #[test]
    fn locks_grow_and_stop_at_a_day() {
        assert_eq!(lock_seconds(1), 15 * 60);
        assert_eq!(lock_seconds(2), 30 * 60);
        assert_eq!(lock_seconds(3), 60 * 60);
        assert_eq!(lock_seconds(8), MAX_LOCK_SECONDS);
        assert_eq!(lock_seconds(19), MAX_LOCK_SECONDS);
        // At most 100 guesses, ever: about three in ten thousand to hit one of the three
        // codes a step of skew accepts.
        assert_eq!(BLOCK_AFTER / MAX_FAILURES, 20);
    }

    #[test]
    fn uri_is_what_authenticators_expect() {
        let secret = new_secret();
        let uri = otpauth_uri(&secret, "alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/pim:alice?secret="), "{uri}");
        assert!(uri.contains(&to_base32(&secret)));
        assert!(uri.contains("issuer=pim"));
        assert_eq!(from_base32(&to_base32(&secret)).unwrap(), secret);
        assert!(qr_text(&uri).lines().count() > 10);
    }
}
