//! What text may hold where another person later reads it.

/// Whether a character must not reach a terminal as it is.
pub fn unsafe_char(c: char) -> bool {
    // What tables are made of, first: ASCII (only its controls) and box drawing (none).
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    if ('\u{2500}'..='\u{257F}').contains(&c) {
        return false;
    }
    c.is_control()
        // Format characters (Unicode category Cf), fillers and blanks that show nothing,
        // variation selectors.
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{0600}'..='\u{0605}' | '\u{061C}' | '\u{06DD}'
            | '\u{070F}' | '\u{0890}'..='\u{0891}' | '\u{08E2}' | '\u{115F}' | '\u{1160}'
            | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// `path` as one word of a shell command that a message suggests: as it is when it holds
/// nothing a shell would act on, else in single quotes (a quote inside as `'\''`), so that
/// pasting the suggestion runs nothing a name someone chose (`q'$(touch x)'z`) holds.
pub fn shell_word(path: &std::path::Path) -> String {
    let text = path.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.into_owned();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn a_suggested_path_is_one_shell_word() {
        assert_eq!(
            super::shell_word(Path::new("/var/lib/pim/pim.db")),
            "/var/lib/pim/pim.db"
        );
        let hostile = Path::new("/tmp/q'$(touch /tmp/PWNED)'z");
        let word = super::shell_word(hostile);
        assert_eq!(word, r"'/tmp/q'\''$(touch /tmp/PWNED)'\''z'");
        // What a shell makes of it: the name itself, one argument, nothing run.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s' {word}"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            hostile.to_str().unwrap()
        );
        assert_eq!(super::shell_word(Path::new("a b")), "'a b'");
    }
}
