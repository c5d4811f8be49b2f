//! Drawing for people (tables, relative times) and for scripts (JSON), to stdout.
//!
//! Text that a user wrote reaches other people's terminals here, so human output never
//! carries it raw: control characters (C0, DEL, C1), bidirectional overrides and
//! zero-width or otherwise invisible characters are shown escaped (`\x1b`, `\u202e`).
//! Data outputs (JSON, CSV, `policy export`, completions) keep the exact bytes.

use anyhow::Result;
use chrono::{DateTime, Utc};
use comfy_table::{presets, TableComponent};
use serde::Serialize;
use std::borrow::Cow;
use std::io::Write;

use crate::text::unsafe_char;

/// The colours tables may paint with (SGR codes): reset, dim, red, green, yellow.
const COLOURS: &[&str] = &["0", "2", "31", "32", "33"];

/// A secret of this process that marks the colours a table asked for, so that no text a
/// user wrote can forge one: `\u{91}NONCE CODE \u{92}` becomes `ESC [ CODE m` on output, and
/// anything else unsafe is escaped as usual.
fn colour_nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| {
        let mut bytes = [0u8; 12];
        // Without randomness there is no colour (the marks then never match).
        if getrandom::fill(&mut bytes).is_err() {
            return "-".repeat(40);
        }
        hex::encode(bytes)
    })
}

fn colour_mark(code: &str) -> String {
    format!("\u{91}{}{code}\u{92}", colour_nonce())
}

/// The colour code of a mark at the start of `text`, and the mark's length.
fn colour_at(text: &str) -> Option<(&str, usize)> {
    let rest = text.strip_prefix('\u{91}')?.strip_prefix(colour_nonce())?;
    let end = rest.find('\u{92}')?;
    let code = &rest[..end];
    COLOURS.contains(&code).then(|| {
        (
            code,
            '\u{91}'.len_utf8() + colour_nonce().len() + end + '\u{92}'.len_utf8(),
        )
    })
}

/// How many combining marks in a row a terminal is shown as they are (Vietnamese stacks two
/// on a letter, Thai and Devanagari three).
const MAX_MARKS: usize = 4;

/// A character drawn over the one before it (a combining mark: no width of its own, and not
/// already an unsafe character).
fn is_mark(c: char) -> bool {
    !c.is_ascii() && unicode_width::UnicodeWidthChar::width(c) == Some(0) && !unsafe_char(c)
}

/// Whether `text` has more than `MAX_MARKS` combining marks in a row.
fn stacks_marks(text: &str) -> bool {
    let mut run = 0;
    text.chars().any(|c| {
        run = if is_mark(c) { run + 1 } else { 0 };
        run > MAX_MARKS
    })
}

/// Whether `text` is printable ASCII (with newlines, if `newlines`): nothing in it is
/// unsafe, found a byte at a time (most text pim shows; `unsafe_char` sees the rest).
fn printable_ascii(text: &str, newlines: bool) -> bool {
    text.bytes()
        .all(|b| (0x20..0x7f).contains(&b) || (newlines && b == b'\n'))
}

fn escape(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    if printable_ascii(text, keep_newlines)
        || !(text
            .chars()
            .any(|c| unsafe_char(c) && !(keep_newlines && c == '\n'))
            || stacks_marks(text))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut skip = 0;
    let mut marks = 0;
    for (i, c) in text.char_indices() {
        if i < skip {
            continue;
        }
        // A mark past the few a script stacks on one letter is escaped: a tower of them
        // would spill over the rows above and below (a "Zalgo" justification).
        marks = if is_mark(c) { marks + 1 } else { 0 };
        if marks > MAX_MARKS {
            match u16::try_from(c as u32) {
                Ok(unit) => out.push_str(&format!("\\u{unit:04x}")),
                Err(_) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
            continue;
        }
        if c == '\u{91}' {
            if let Some((code, len)) = colour_at(&text[i..]) {
                out.push_str(&format!("\x1b[{code}m"));
                skip = i + len;
                continue;
            }
        }
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

/// A note or warning on stderr, unsafe characters escaped. On a terminal a line wider than
/// it is broken at spaces (its indentation kept on every part), not mid-word by the terminal.
pub fn note(text: &str) {
    let safe = safe_lines(text);
    match terminal_width(true).filter(|&w| w >= 20) {
        Some(width) => eprint!("{}", wrapped(&safe, width)),
        None => eprintln!("{safe}"),
    }
}

/// What a command says it did, on stdout (unsafe characters escaped). On a terminal a line
/// wider than it is broken at spaces, as `note` breaks one, not mid-word by the terminal. Only
/// for sentences: a key, a token, a checkpoint, a QR code or a table goes through `out`, since
/// a line break pim put in would be copied with it.
pub fn say(text: &str) -> Result<()> {
    let safe = safe_lines(text);
    match terminal_width(false).filter(|&w| w >= 20) {
        Some(width) => data(&wrapped(&safe, width)),
        None => data(&safe),
    }
}

/// Each line of `text` broken at spaces into parts of at most `width` columns, each part on a
/// line of its own.
fn wrapped(text: &str, width: usize) -> String {
    let mut out = String::new();
    for line in text.split('\n') {
        for part in wrap_indented(line, width) {
            out.push_str(&part);
            out.push('\n');
        }
    }
    out
}

/// `line` in parts of at most `width` columns broken at spaces, each part indented as the
/// line is (a line that fits, or with no room left beside its indentation, as it is). A word
/// wider than that (a path, a hash) is never broken: it has a line of its own, which the
/// terminal wraps, and is copied from the screen whole.
fn wrap_indented(line: &str, width: usize) -> Vec<String> {
    let text = line.trim_start_matches(' ');
    let indent = line.len() - text.len();
    if display_width(line) <= width || indent + 10 > width {
        return vec![line.to_string()];
    }
    break_lines(text, width - indent, false)
        .into_iter()
        .map(|part| format!("{}{part}", &line[..indent]))
        .collect()
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
    if printable_ascii(&text, true) || !text.chars().any(escaped) {
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
/// terminal raw. On a terminal it fits the screen: free text (justifications, details,
/// names) is cut with an ellipsis, and when even that does not fit, each row becomes a
/// block of `header: value` lines. Status and severity words are coloured on a terminal
/// unless `NO_COLOR` is set; pipes and files get the full table, uncoloured.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Fit this width (None: as wide as the content).
    width: Option<usize>,
    colour: bool,
}

/// Columns of free text: the ones cut to fit.
const FREE: &[&str] = &[
    "justification",
    "ticket",
    "details",
    "detail",
    "description",
    "reason",
    "because",
    "name",
    "display name",
    "email",
    "result",
    "last error",
    "recipients",
    "via",
    "roles",
    "permissions",
];

/// Columns whose words get a colour.
const COLOURED: &[&str] = &[
    "status",
    "state",
    "severity",
    "result",
    "decision",
    "recommendation",
];

/// The ANSI colour of a status or severity word, if it has one.
fn colour_of(word: &str) -> Option<&'static str> {
    Some(match word {
        "active" | "ok" | "keep" | "approve" | "approved" | "kept" | "completed" | "sent"
        | "applied" => "32",
        "pending" | "scheduled" | "warning" | "open" | "due" | "waiting" => "33",
        "denied" | "revoked" | "critical" | "problem" | "remove" | "removed" | "deny"
        | "failed" | "refused" => "31",
        "expired" | "deactivated" | "canceled" | "timed-out" | "info" => "2",
        _ => return None,
    })
}

pub fn display_width(text: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(text)
}

/// `text` cut to `width` display columns, with an ellipsis when it was wider.
pub fn fit(text: &str, width: usize) -> Cow<'_, str> {
    if display_width(text) <= width {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    Cow::Owned(out)
}

/// The words of `text` (split at spaces), with a `quoted command` kept as one: a command
/// the reader should copy is never broken across lines when it fits on one.
fn code_spans(text: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut open = false;
    for word in text.split(' ') {
        match words.last_mut() {
            Some(last) if open => {
                last.push(' ');
                last.push_str(word);
            }
            _ => words.push(word.to_string()),
        }
        if word.matches('`').count() % 2 == 1 {
            open = !open;
        }
    }
    words
}

/// `text` in lines of at most `width` display columns (broken at spaces when it can).
fn wrap_text(text: &str, width: usize) -> Vec<String> {
    break_lines(text, width, true)
}

/// `text` broken at spaces into lines of at most `width` display columns; a word wider than
/// that is broken too with `split_words`, else left whole on a line of its own.
fn break_lines(text: &str, width: usize, split_words: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut used = 0;
    // (a command longer than a line is broken at its spaces, like other words)
    let spans = code_spans(text);
    let words = spans.iter().flat_map(|span| {
        if display_width(span) > width {
            span.split(' ').collect()
        } else {
            vec![span.as_str()]
        }
    });
    for word in words {
        let w = display_width(word);
        if used > 0 && used + 1 + w > width {
            lines.push(std::mem::take(&mut line));
            used = 0;
        }
        if used > 0 {
            line.push(' ');
            used += 1;
        }
        for c in word.chars() {
            let cw = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
            if split_words && used + cw > width {
                lines.push(std::mem::take(&mut line));
                used = 0;
            }
            line.push(c);
            used += cw;
        }
    }
    lines.push(line);
    lines
}

/// Whether colour may be used on stdout: a terminal, and no `NO_COLOR`.
pub fn colour_on_stdout() -> bool {
    terminal_width(false).is_some() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

impl Table {
    pub fn add_row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| safe(c.as_ref()).into_owned())
                .collect(),
        );
        self
    }

    /// On a terminal, fit at most `width` columns (or its width, if narrower).
    pub fn wrap(&mut self, width: u16) -> &mut Self {
        self.width = self.width.map(|w| w.min(usize::from(width)));
        self
    }

    fn comfy(&self, rows: &[Vec<String>]) -> comfy_table::Table {
        let mut t = comfy_table::Table::new();
        t.load_preset(presets::UTF8_HORIZONTAL_ONLY)
            .remove_style(TableComponent::HorizontalLines)
            .remove_style(TableComponent::MiddleIntersections)
            .remove_style(TableComponent::LeftBorderIntersections)
            .remove_style(TableComponent::RightBorderIntersections);
        t.set_header(self.header.iter());
        for r in rows {
            t.add_row(r.iter());
        }
        t
    }

    /// `rows` under the header as `comfy` lays them out (no width to fit), written here
    /// directly when every row is one line of as many cells as the header (a tenth of
    /// comfy-table's time for a hundred rows; a test holds the two to the same bytes).
    fn render(&self, rows: &[Vec<String>]) -> String {
        let n = self.header.len();
        // comfy-table also splits a line wider than 65,535 columns (its widths are u16).
        if n == 0
            || rows.is_empty()
            || rows.iter().any(|r| r.len() != n)
            || std::iter::once(&self.header)
                .chain(rows)
                .flatten()
                .any(|c| c.contains('\n') || c.len() > usize::from(u16::MAX))
        {
            return self.comfy(rows).to_string();
        }
        // A column is at least one wide, as comfy-table makes it.
        let mut widths: Vec<usize> = self
            .header
            .iter()
            .map(|h| display_width(h).max(1))
            .collect();
        let cell_widths: Vec<Vec<usize>> = rows
            .iter()
            .map(|r| r.iter().map(|c| display_width(c)).collect())
            .collect();
        for r in &cell_widths {
            for (w, &c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c);
            }
        }
        // Each cell padded by a space on either side, a space between two columns.
        let total = widths.iter().map(|w| w + 2).sum::<usize>() + n - 1;
        let mut out = String::with_capacity((rows.len() + 4) * (total + 1) * 2);
        let rule = |out: &mut String, c: char| out.extend(std::iter::repeat_n(c, total));
        let line = |out: &mut String, cells: &[String], cell_widths: &[usize]| {
            for (i, (cell, (&w, &cw))) in
                cells.iter().zip(widths.iter().zip(cell_widths)).enumerate()
            {
                if i > 0 {
                    out.push(' ');
                }
                out.push(' ');
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', w - cw + 1));
            }
        };
        rule(&mut out, '─');
        out.push('\n');
        let header_widths: Vec<usize> = self.header.iter().map(|h| display_width(h)).collect();
        line(&mut out, &self.header, &header_widths);
        out.push('\n');
        rule(&mut out, '═');
        for (r, w) in rows.iter().zip(&cell_widths) {
            out.push('\n');
            line(&mut out, r, w);
        }
        out.push('\n');
        rule(&mut out, '─');
        out
    }

    /// The table laid out for `width` columns: the rows with free text cut, or None when
    /// it cannot fit (then blocks).
    fn fitted(&self, width: usize) -> Option<Vec<Vec<String>>> {
        let n = self.header.len();
        let widest = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| display_width(c))
                .chain([display_width(&self.header[i])])
                .max()
                .unwrap_or(0)
        };
        let mut widths: Vec<usize> = (0..n).map(widest).collect();
        let rendered = self.render(&self.rows);
        let total = rendered.lines().map(display_width).max().unwrap_or(0);
        if total <= width {
            return Some(self.rows.clone());
        }
        let overhead = total - widths.iter().sum::<usize>();
        let budget = width.checked_sub(overhead)?;
        let free: Vec<usize> = (0..n)
            .filter(|&i| FREE.contains(&self.header[i].as_str()))
            .collect();
        // Shrink the widest free column first, none below 10 (or its header).
        let floors: Vec<usize> = (0..n)
            .map(|i| display_width(&self.header[i]).max(10).min(widths[i]))
            .collect();
        while widths.iter().sum::<usize>() > budget {
            let &i = free
                .iter()
                .filter(|&&i| widths[i] > floors[i])
                .max_by_key(|&&i| widths[i])?;
            widths[i] -= 1;
        }
        Some(
            self.rows
                .iter()
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .map(|(i, c)| {
                            fit(c, widths.get(i).copied().unwrap_or(usize::MAX)).into_owned()
                        })
                        .collect()
                })
                .collect(),
        )
    }

    /// A two-column table (`setting`, `value`) too wide for the terminal: each row one
    /// `name  value` line, the value wrapped under its column (blocks would take three rows
    /// for each setting). None where the names leave the values less than 20 columns.
    fn pairs(&self) -> Option<String> {
        if self.header.len() != 2 {
            return None;
        }
        let width = self.width?;
        let label = self
            .rows
            .iter()
            .filter_map(|r| r.first())
            .chain([&self.header[0]])
            .map(|c| display_width(c))
            .max()?;
        let room = width.checked_sub(label + 2).filter(|&r| r >= 20)?;
        let indent = format!("\n{}", " ".repeat(label + 2));
        let line = |name: &str, value: &str| {
            let pad = " ".repeat(label - display_width(name));
            format!(
                "{name}{pad}  {}",
                self.paint(&self.header[1], &wrap_text(value, room).join(&indent))
            )
        };
        let mut out = vec![line(&self.header[0], &self.header[1])];
        out.extend(self.rows.iter().map(|r| {
            line(
                r.first().map_or("", String::as_str),
                r.get(1).map_or("", String::as_str),
            )
        }));
        Some(out.join("\n"))
    }

    /// One block per row: `header: value` lines, a blank line between rows.
    fn blocks(&self) -> String {
        let label = self
            .header
            .iter()
            .map(|h| display_width(h))
            .max()
            .unwrap_or(0);
        self.rows
            .iter()
            .map(|r| {
                self.header
                    .iter()
                    .zip(r)
                    .map(|(h, v)| {
                        let width = self.width.unwrap_or(80);
                        if width.saturating_sub(label + 2) < 20 {
                            // Too narrow for a column of labels: each value under its own.
                            let lines = wrap_text(v, width.saturating_sub(2).max(10));
                            return format!("{h}:\n  {}", self.paint(h, &lines.join("\n  ")));
                        }
                        let pad = " ".repeat(label - display_width(h));
                        let room = width - label - 2;
                        let indent = format!("\n{}", " ".repeat(label + 2));
                        format!(
                            "{h}:{pad} {}",
                            self.paint(h, &wrap_text(v, room).join(&indent))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    fn paint(&self, header: &str, value: &str) -> String {
        match colour_of(value).filter(|_| self.colour && COLOURED.contains(&header)) {
            Some(c) => format!("{}{value}{}", colour_mark(c), colour_mark("0")),
            None => value.to_string(),
        }
    }

    /// Colour the status words of a rendered table: each coloured column's cell starts at
    /// the display column where its header does.
    fn colour_rendered(&self, text: &str, rows: &[Vec<String>]) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let Some(header_line) = lines
            .iter()
            .position(|l| self.header.iter().all(|h| l.contains(h.as_str())))
        else {
            return text.to_string();
        };
        let starts: Vec<(usize, usize)> = self
            .header
            .iter()
            .enumerate()
            .filter(|(_, h)| COLOURED.contains(&h.as_str()))
            .filter_map(|(i, h)| {
                let at = lines[header_line].find(&format!(" {h} "))? + 1;
                Some((i, display_width(&lines[header_line][..at])))
            })
            .collect();
        let mut row = 0;
        for line in lines.iter_mut().skip(header_line + 1) {
            if row >= rows.len()
                || line.trim().is_empty()
                || line.starts_with('─')
                || line.starts_with('═')
                || line.trim_start().starts_with(['─', '═'])
            {
                continue;
            }
            // Paint from the right so that byte offsets to the left stay valid.
            for &(i, col) in starts.iter().rev() {
                let value = &rows[row][i];
                let Some(c) = colour_of(value) else { continue };
                let mut seen = 0;
                let Some(byte) = line.char_indices().find_map(|(b, ch)| {
                    if seen == col {
                        return Some(b);
                    }
                    seen += unicode_width::UnicodeWidthChar::width(ch).unwrap_or(0);
                    None
                }) else {
                    continue;
                };
                if line[byte..].starts_with(value.as_str()) {
                    line.replace_range(
                        byte..byte + value.len(),
                        &format!("{}{value}{}", colour_mark(c), colour_mark("0")),
                    );
                }
            }
            row += 1;
        }
        lines.join("\n")
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(width) = self.width else {
            return f.write_str(&self.render(&self.rows));
        };
        match self.fitted(width) {
            Some(rows) => {
                let text = self.render(&rows);
                if self.colour {
                    f.write_str(&self.colour_rendered(&text, &rows))
                } else {
                    f.write_str(&text)
                }
            }
            None => f.write_str(&self.pairs().unwrap_or_else(|| self.blocks())),
        }
    }
}

/// A table for stdout: fitted to the terminal when stdout is one.
pub fn table(header: &[&str]) -> Table {
    Table {
        header: header.iter().map(|h| h.to_string()).collect(),
        rows: Vec::new(),
        width: terminal_width(false),
        colour: colour_on_stdout(),
    }
}

/// A table for stderr (shown before a prompt): fitted to the terminal stderr is.
pub fn table_for_stderr(header: &[&str]) -> Table {
    Table {
        header: header.iter().map(|h| h.to_string()).collect(),
        rows: Vec::new(),
        width: terminal_width(true),
        colour: terminal_width(true).is_some()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    }
}

/// A stored instant for people (see `crate::time::human`); `None` is permanent.
pub fn when(unix: Option<i64>, now: DateTime<Utc>) -> String {
    match unix {
        None => "permanent".to_string(),
        Some(t) => crate::time::human(t, now),
    }
}

/// `when`, to the second (for audit events).
pub fn when_precise(unix: i64, now: DateTime<Utc>) -> String {
    crate::time::human_precise(unix, now)
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
    fn a_tower_of_combining_marks_is_cut_down() {
        // Decomposed Vietnamese and Devanagari stay as they are.
        for text in [
            "Vie\u{323}\u{302}t",
            "\u{915}\u{94d}\u{937}\u{93f}",
            "plain",
        ] {
            assert_eq!(safe(text), text);
        }
        let tower = format!("x{}y", "\u{301}".repeat(10));
        let shown = safe(&tower);
        assert_eq!(
            shown,
            format!("x{}{}y", "\u{301}".repeat(4), "\\u0301".repeat(6))
        );
    }

    #[test]
    fn a_long_note_line_is_broken_at_spaces_with_its_indentation() {
        assert_eq!(wrap_indented("short", 20), ["short"]);
        assert_eq!(
            wrap_indented("  - one two three four five six", 20),
            ["  - one two three", "  four five six"]
        );
        assert_eq!(
            wrap_indented("alpha beta gamma delta epsilon", 20),
            ["alpha beta gamma", "delta epsilon"]
        );
        // A quoted command is moved whole to the next line, not broken; one longer than a
        // line is broken as words are.
        assert_eq!(
            wrap_indented("Note: run `pim sweep --json` to retry them now.", 24),
            ["Note: run", "`pim sweep --json` to", "retry them now."]
        );
        assert_eq!(
            wrap_indented("a `b c d e f g h i j k l m n o p` q", 12),
            ["a `b c d e f", "g h i j k l", "m n o p` q"]
        );
        // No room beside the indentation: left to the terminal.
        let deep = format!("{}x y z", " ".repeat(15));
        assert_eq!(wrap_indented(&deep, 20), vec![deep]);
        // A word wider than the line (a hash, a path) is not broken: it is copied whole.
        let hash = "0123456789abcdef".repeat(4);
        assert_eq!(
            wrap_indented(&format!("The chain holds: head {hash}, root x."), 30),
            ["The chain holds: head", &format!("{hash},"), "root x."]
        );
    }

    proptest::proptest! {
        /// The direct layout is comfy-table's, byte for byte: wide, zero-width and empty
        /// cells, spaces at either end, any number of columns; line breaks go to comfy.
        #[test]
        fn tables_are_laid_out_as_comfy_table_does(
            header in proptest::collection::vec("[a-z ]{0,12}", 1..6),
            rows in proptest::collection::vec(
                proptest::collection::vec("[a-zA-Z0-9 /:()._\\-\u{e9}\u{65e5}\u{301}\u{200b}\u{1F600}]{0,14}", 6),
                0..25,
            ),
            line_break in proptest::option::weighted(0.1, 0usize..1000),
        ) {
            let mut t = Table {
                header: header.clone(),
                rows: Vec::new(),
                width: None,
                colour: false,
            };
            for r in &rows {
                t.rows.push(r[..header.len()].to_vec());
            }
            if let Some(at) = line_break.filter(|_| !t.rows.is_empty()) {
                let n = t.rows.len() * header.len();
                t.rows[at % n / header.len()][at % header.len()].push_str("\nnext");
            }
            proptest::prop_assert_eq!(t.render(&t.rows), t.comfy(&t.rows).to_string());
        }
    }

    /// What comfy-table lays out its own way goes to it: a cell wider than its widths
    /// (u16) can hold, a table without columns.
    #[test]
    fn tables_it_would_lay_out_otherwise_go_to_comfy_table() {
        let mut t = Table {
            header: vec!["justification".into(), "scope".into()],
            rows: vec![vec!["x".repeat(70_000), "/".into()]],
            width: None,
            colour: false,
        };
        assert_eq!(t.render(&t.rows), t.comfy(&t.rows).to_string());
        t.header.clear();
        t.rows = vec![Vec::new()];
        assert_eq!(t.render(&t.rows), t.comfy(&t.rows).to_string());
    }

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

    /// The byte-wise shortcut says "printable" of exactly the ASCII text in which no
    /// character is unsafe (newlines allowed or not), wherever the byte stands.
    #[test]
    fn printable_ascii_is_what_no_unsafe_character_means_for_ascii() {
        for b in 0..=0x7fu8 {
            for text in [
                format!("{}", b as char),
                format!("abc{}", b as char),
                format!("{}defghijk", b as char),
                format!("0123456789abcdef{}0123456789", b as char),
            ] {
                for newlines in [false, true] {
                    let by_char = !text
                        .chars()
                        .any(|c| unsafe_char(c) && !(newlines && c == '\n'));
                    assert_eq!(
                        printable_ascii(&text, newlines),
                        by_char,
                        "{b:#x} {newlines}"
                    );
                }
            }
        }
        // Anything beyond ASCII is for `unsafe_char` to judge.
        assert!(!printable_ascii("ünïcödé", false));
        assert!(!printable_ascii("\u{9b}", true));
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
    fn only_a_table_can_colour() {
        // Text that looks like a colour mark, without this process's secret, is escaped.
        let forged = "\u{91}31\u{92}red\u{91}0\u{92}";
        assert_eq!(safe_lines(forged), "\\x9131\\x92red\\x910\\x92");
        // A mark of the table's own becomes the colour; other codes (conceal: 8) do not.
        let real = format!("{}ok{}", colour_mark("32"), colour_mark("0"));
        assert_eq!(safe_lines(&real), "\x1b[32mok\x1b[0m");
        let conceal = format!("{}hidden", colour_mark("8"));
        assert!(!safe_lines(&conceal).contains('\x1b'));
        // A cell with a mark in it is escaped before any colour is added.
        let mut t = table(&["status"]);
        t.colour = true;
        t.width = Some(80);
        t.add_row([real.as_str()]);
        assert!(!safe_lines(&t.to_string()).contains("\x1b[32m"));
    }

    #[test]
    fn a_narrow_table_cuts_free_text_then_becomes_blocks() {
        let mut t = table(&["id", "status", "justification"]);
        t.width = Some(40);
        t.add_row(["1", "active", &"long words ".repeat(10)]);
        let text = t.to_string();
        assert!(text.lines().all(|l| display_width(l) <= 40), "{text}");
        assert!(text.contains('…'), "{text}");
        t.width = Some(20);
        let text = t.to_string();
        assert!(text.starts_with("id:"), "{text}");
        assert!(text.lines().all(|l| display_width(l) <= 20), "{text}");
        t.width = None;
        assert!(t
            .to_string()
            .contains(&"long words ".repeat(10).trim_end().to_string()));
    }

    #[test]
    fn a_narrow_two_column_table_is_one_line_a_row() {
        let mut t = table(&["setting", "value"]);
        t.add_row(["name", "Database Administrator"]);
        t.add_row(["description", "long words ".repeat(8).trim_end()]);
        t.add_row(["max_activation", "\"4h\""]);
        t.width = Some(40);
        let text = t.to_string();
        assert!(text.lines().all(|l| display_width(l) <= 40), "{text}");
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "setting         value",
                "name            Database Administrator",
                "description     long words long words",
                "                long words long words",
                "                long words long words",
                "                long words long words",
                "max_activation  \"4h\"",
            ],
            "{text}"
        );
        // Too narrow for a column of names: blocks, as any table.
        t.width = Some(30);
        assert!(t.to_string().starts_with("setting:"), "{}", t);
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
