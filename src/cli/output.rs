//! Drawing for people (tables, relative times) and for scripts (JSON), to stdout.
//!
//! Text that a user wrote reaches other people's terminals here, so human output never
//! carries it raw: control characters (C0, DEL, C1), bidirectional overrides and
//! zero-width or otherwise invisible characters are shown escaped (`\x1b`, `\u202e`).
//! Data outputs (JSON, CSV, `policy export`, completions) keep the exact bytes.

use anyhow::Result;
use chrono::{DateTime, Local, Utc};
use comfy_table::{presets, TableComponent};
use serde::Serialize;
use std::borrow::Cow;
use std::io::Write;

/// Whether a character must not reach a terminal as it is.
fn unsafe_char(c: char) -> bool {
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

fn escape(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| unsafe_char(c) && !(keep_newlines && c == '\n'))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' if keep_newlines => out.push('\n'),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if unsafe_char(c) && (c as u32) <= 0xFFFF => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One value (a cell, a name, a justification) as a terminal may show it: every unsafe
/// character escaped, newlines included.
pub fn safe(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// A whole message as a terminal may show it: like `safe`, but its own lines stay lines.
pub fn safe_lines(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

/// Write human text to stdout (unsafe characters escaped). A closed pipe (`pim ... | head`)
/// ends the command quietly.
pub fn out(text: &str) -> Result<()> {
    data(&safe_lines(text))
}

/// Write data to stdout exactly as it is (JSON, `policy export`, completions).
pub fn data(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(())
}

/// The width of the terminal that stdout (or, with `stderr`, stderr) is, if it is one.
/// `COLUMNS` wins when set, as shells and `tput` allow.
pub fn terminal_width(stderr: bool) -> Option<usize> {
    use std::io::IsTerminal;
    let tty = if stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    if !tty {
        return None;
    }
    if let Some(c) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|&c| c > 0)
    {
        return Some(c);
    }
    let term = if stderr {
        console::Term::stderr()
    } else {
        console::Term::stdout()
    };
    term.size_checked().map(|(_, cols)| usize::from(cols))
}

/// `text` cut to `width` characters, with an ellipsis when it was longer.
pub fn ellipsis(text: &str, width: usize) -> Cow<'_, str> {
    if text.chars().count() <= width {
        return Cow::Borrowed(text);
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    Cow::Owned(out)
}

/// A note or warning on stderr, unsafe characters escaped.
pub fn note(text: &str) {
    eprintln!("{}", safe_lines(text));
}

pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(c.downcast_ref::<crate::Error>(), Some(crate::Error::Io(io)) if io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    data(&json_safe(serde_json::to_string_pretty(value)?))
}

/// Serialized JSON with every unsafe character written as a `\u` escape: the same data for
/// any JSON reader, and nothing raw for a terminal. (serde_json already escapes C0; the
/// rest can only occur inside strings.)
pub fn json_safe(text: String) -> String {
    // Newlines are the layout of pretty JSON; inside strings serde_json escapes them.
    let escaped = |c: char| c != '\n' && unsafe_char(c);
    if !text.chars().any(escaped) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escaped(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", unit));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Data for stdout: exact when it goes to a file or a pipe, with unsafe characters escaped
/// when a person reads it on a terminal.
pub fn data_for_terminal(text: &str) -> Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        out(text)
    } else {
        data(text)
    }
}

/// A table for people. Every cell passes through `safe`, so nothing a user wrote reaches the
/// terminal raw.
pub struct Table(comfy_table::Table);

impl Table {
    pub fn add_row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.0.add_row(
            cells
                .into_iter()
                .map(|c| safe(c.as_ref()).into_owned())
                .collect::<Vec<_>>(),
        );
        self
    }

    /// Wrap long cells within `width` columns.
    pub fn wrap(&mut self, width: u16) -> &mut Self {
        self.0
            .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
            .set_width(width);
        self
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

pub fn table(header: &[&str]) -> Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(presets::UTF8_HORIZONTAL_ONLY)
        .remove_style(TableComponent::HorizontalLines)
        .remove_style(TableComponent::MiddleIntersections)
        .remove_style(TableComponent::LeftBorderIntersections)
        .remove_style(TableComponent::RightBorderIntersections);
    t.set_header(header.iter().copied());
    Table(t)
}

/// A stored instant for people: local time and how far from now.
pub fn when(unix: Option<i64>, now: DateTime<Utc>) -> String {
    match unix {
        None => "permanent".to_string(),
        Some(t) => {
            let at = crate::time::from_unix(t);
            format!(
                "{} ({})",
                at.with_timezone(&Local).format("%Y-%m-%d %H:%M"),
                crate::time::relative(at, now)
            )
        }
    }
}

/// Parse a stored RFC 3339 string back to unix seconds, for `when`.
pub fn unix(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_unsafe_reaches_a_terminal() {
        let evil = "ok\x1b[2J\x1b]8;;http://x\x07link\r\u{202e}gpj.exe\u{200b}\u{9b}\x7f\nend";
        let shown = safe(evil);
        assert!(!shown.chars().any(unsafe_char), "{shown}");
        assert_eq!(
            shown,
            "ok\\x1b[2J\\x1b]8;;http://x\\x07link\\r\\u202egpj.exe\\u200b\\x9b\\x7f\\nend"
        );
        let lines = safe_lines(evil);
        assert!(lines.contains('\n'));
        assert!(!lines.chars().any(|c| c != '\n' && unsafe_char(c)));
        assert_eq!(
            safe("plain text, ünïcödé and 漢字"),
            "plain text, ünïcödé and 漢字"
        );
        assert_eq!(safe("tag\u{e0041}"), "tag\\u{e0041}");
    }

    #[test]
    fn json_stays_exact_but_escaped() {
        let text = serde_json::to_string_pretty(
            &serde_json::json!({"j": "a\u{202e}b\u{9b}c\u{1F600}\u{e0041}\u{7f}\n"}),
        )
        .unwrap();
        let safe = json_safe(text);
        assert!(!safe.chars().any(|c| c != '\n' && unsafe_char(c)), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["j"], "a\u{202e}b\u{9b}c\u{1F600}\u{e0041}\u{7f}\n");
    }

    #[test]
    fn table_cells_are_escaped() {
        let mut t = table(&["a"]);
        t.add_row(["x\x1b[31my\u{202e}"]);
        let text = t.to_string();
        assert!(
            !text.contains('\x1b') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(text.contains("x\\x1b[31my\\u202e"), "{text}");
    }
}
