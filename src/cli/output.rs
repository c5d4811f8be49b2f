//! Drawing for people (tables, relative times) and for scripts (JSON), to stdout.

use anyhow::Result;
use chrono::{DateTime, Local, Utc};
use comfy_table::{presets, Table, TableComponent};
use serde::Serialize;
use std::io::Write;

/// Write data to stdout. A closed pipe (`pim ... | head`) ends the command quietly.
pub fn out(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(())
}

pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(c.downcast_ref::<crate::Error>(), Some(crate::Error::Io(io)) if io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    out(&serde_json::to_string_pretty(value)?)
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_HORIZONTAL_ONLY)
        .remove_style(TableComponent::HorizontalLines)
        .remove_style(TableComponent::MiddleIntersections)
        .remove_style(TableComponent::LeftBorderIntersections)
        .remove_style(TableComponent::RightBorderIntersections);
    t.set_header(header.iter().copied());
    t
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
