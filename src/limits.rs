//! How long the text that callers write into pim may be. Every free-text field has a limit,
//! checked where it enters the core (flags, prompts, import and apply files, the policy), so
//! one caller cannot make every later command slow or every later screen unreadable.

use crate::error::{Error, Result};

/// User names and role keys.
pub const NAME: usize = 64;
/// A user's display name.
pub const DISPLAY_NAME: usize = 128;
/// An e-mail address (RFC 5321's longest path).
pub const EMAIL: usize = 254;
/// Justifications and reasons: activation, assignment, approval, denial, revocation,
/// extension, review decisions.
pub const JUSTIFICATION: usize = 1000;
/// A ticket reference.
pub const TICKET: usize = 128;
/// An access review's name.
pub const REVIEW_NAME: usize = 200;
/// A scope such as `/prod/db`.
pub const SCOPE: usize = 256;
/// A role's display name in the policy.
pub const ROLE_NAME: usize = 128;
/// A role's description in the policy.
pub const DESCRIPTION: usize = 2000;
/// A `justification_pattern` in the policy.
pub const PATTERN: usize = 500;
/// Other strings of the policy (hosts, URLs, command arguments).
pub const POLICY_STRING: usize = 2048;
/// A whole policy file, in bytes.
pub const POLICY_BYTES: usize = 256 * 1024;
/// An import or apply file, in bytes (read whole before the transaction starts).
pub const BULK_BYTES: u64 = 128 * 1024 * 1024;
/// A service token.
pub const TOKEN: usize = 256;

/// Refuse `value` (exit 2) when it is longer than `max` characters.
pub fn check(field: &str, value: &str, max: usize) -> Result<()> {
    let n = value.chars().count();
    if n > max {
        return Err(Error::Usage(format!(
            "The {field} is {n} characters long; the limit is {max}. Shorten it."
        )));
    }
    Ok(())
}

/// Refuse (exit 2) a name that is not one line of visible text: no control characters (a
/// newline in a name could forge a line of someone else's screen).
pub fn one_line(field: &str, value: &str) -> Result<()> {
    if value.chars().any(breaks_a_line) {
        return Err(Error::Usage(format!(
            "The {field} must be one line without control characters."
        )));
    }
    Ok(())
}

/// Whether `c` is a control character, or one a terminal, mail or chat client may take for
/// a line break (U+2028, U+2029) or that reorders the text around it (bidirectional
/// embeddings, overrides and isolates).
pub fn breaks_a_line(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `check` for an optional value.
pub fn check_opt(field: &str, value: Option<&str>, max: usize) -> Result<()> {
    value.map_or(Ok(()), |v| check(field, v, max))
}

#[cfg(test)]
mod tests {
    #[test]
    fn limits_count_characters_and_refuse_with_exit_2() {
        assert!(super::check("ticket", &"é".repeat(128), super::TICKET).is_ok());
        let e = super::check("ticket", &"x".repeat(129), super::TICKET).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("limit is 128"), "{e}");
    }

    #[test]
    fn one_line_refuses_controls_line_separators_and_reordering() {
        for bad in [
            "a\nb",
            "a\u{1b}[31m",
            "a\u{9b}b",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\u{202e}b",
            "a\u{2067}b",
        ] {
            let e = super::one_line("ticket", bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        for good in ["CHG-1234", "INC-7 disk full", "Änderung №5", "a\u{200d}b"] {
            assert!(super::one_line("ticket", good).is_ok(), "{good:?}");
        }
    }
}
