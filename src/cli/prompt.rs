//! Prompts on the terminal (stderr), through dialoguer. Only called when we may prompt.

use anyhow::Result;
use dialoguer::{Confirm, Input, MultiSelect, Password};

/// Free text of at most `limit` characters that `check` accepts; an empty or blank answer
/// is said to be so, and everything is asked again until it fits (what was typed before is
/// kept by the caller).
pub fn text_checked(
    prompt: &str,
    limit: usize,
    check: impl Fn(&str) -> Result<(), String> + 'static,
) -> Result<String> {
    let answer = without_echo(|| {
        Input::<String>::new()
            .with_prompt(prompt)
            .allow_empty(true)
            .report(false)
            .validate_with(move |t: &String| -> Result<(), String> {
                let n = t.chars().count();
                if t.trim().is_empty() {
                    Err("It cannot be empty.".to_string())
                } else if n > limit {
                    Err(format!("That is {n} characters; the limit is {limit}."))
                } else {
                    check(t)
                }
            })
            .interact_text()
    })?;
    report(prompt, &answer)?;
    Ok(answer)
}

/// Run a prompt with the terminal's own echo off. dialoguer draws what is typed itself, and
/// reads each key in raw mode, back in the terminal's mode between keys: what arrived in
/// such a gap (a paste, on a loaded machine) the terminal echoed as well, and the prompt's
/// rows no longer were where dialoguer counted them.
fn without_echo<T>(prompt: impl FnOnce() -> dialoguer::Result<T>) -> dialoguer::Result<T> {
    use std::os::fd::AsRawFd;
    let tty = std::io::stdin();
    let fd = tty.as_raw_fd();
    // SAFETY: tcgetattr and tcsetattr only read and write the termios we hand them.
    let mut mode: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut mode) } != 0 {
        return prompt();
    }
    let saved = mode;
    mode.c_lflag &= !(libc::ECHO | libc::ECHONL);
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &mode) } != 0 {
        return prompt();
    }
    let answer = prompt();
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    answer
}

/// The prompt and its answer, as dialoguer's own report shows them, without what it leaves
/// behind: an answer that wraps onto several rows of a narrow terminal was echoed there, and
/// dialoguer clears only the last of them, so the others stayed above its report (the first
/// half of a long justification, twice).
fn report(prompt: &str, answer: &str) -> Result<()> {
    let term = console::Term::stderr();
    let line = format!("{prompt}: {answer}");
    let width = usize::from(term.size().1).max(1);
    term.clear_last_lines(rows_on_terminal(&line, width) - 1)?;
    term.write_line(&line)?;
    Ok(())
}

/// How many rows `line` takes on a terminal `width` columns wide, counted as the terminal
/// counts them: character by character (a variation selector adds nothing to the emoji
/// before it), and a wide character that does not fit in the last column starts the next
/// row (so 25 wide characters can take a row more than their width says).
fn rows_on_terminal(line: &str, width: usize) -> usize {
    let (mut rows, mut column) = (1, 0);
    for c in line.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if w == 0 {
            continue;
        }
        if column + w > width {
            rows += 1;
            column = 0;
        }
        column += w;
    }
    rows
}

/// Free text of at most `limit` characters, not blank.
pub fn text(prompt: &str, limit: usize) -> Result<String> {
    text_checked(prompt, limit, |_| Ok(()))
}

/// A TOTP code, not echoed.
pub fn code(user: &str) -> Result<String> {
    Ok(Password::new()
        .with_prompt(format!("TOTP code for {user}"))
        .interact()?)
}

/// Something typed without echo.
pub fn hidden(prompt: &str) -> Result<String> {
    Ok(Password::new().with_prompt(prompt).interact()?)
}

/// Yes or no, no unless answered; the answer is taken with Enter, like every other prompt
/// (a `y` alone used to answer, and the Enter typed after it went to the next prompt).
pub fn confirm(prompt: &str) -> Result<bool> {
    Ok(without_echo(|| {
        Confirm::new()
            .with_prompt(prompt)
            .default(false)
            .wait_for_newline(true)
            .interact()
    })?)
}

/// Pick one or several of `items` (space to mark, enter to accept); the indexes chosen.
pub fn pick(prompt: &str, items: &[String]) -> Result<Vec<usize>> {
    Ok(without_echo(|| {
        MultiSelect::new()
            .with_prompt(prompt)
            .items(items)
            .interact()
    })?)
}

#[cfg(test)]
mod tests {
    use super::rows_on_terminal;

    #[test]
    fn rows_are_counted_as_the_terminal_wraps() {
        assert_eq!(rows_on_terminal("", 60), 1);
        assert_eq!(rows_on_terminal(&"x".repeat(60), 60), 1);
        assert_eq!(rows_on_terminal(&"x".repeat(61), 60), 2);
        // 28 columns of prompt and 16 wide characters fill one row exactly.
        let prompt = "Justification for db-admin: ";
        assert_eq!(
            rows_on_terminal(&format!("{prompt}{}", "変".repeat(16)), 60),
            1
        );
        // After 29 columns the 16th wide character does not fit in the last column: it
        // starts row 2, so 120 columns by width (2 rows) take 3 rows on the terminal.
        let line = format!("{}{}{}", "x".repeat(29), "変".repeat(16), "y".repeat(59));
        assert_eq!(console::measure_text_width(&line), 120);
        assert_eq!(rows_on_terminal(&line, 60), 3);
        // A heart with its emoji variation selector is one column to a terminal.
        let heart = format!("{}\u{2764}\u{fe0f}", "x".repeat(59));
        assert_eq!(rows_on_terminal(&heart, 60), 1);
        assert_eq!(
            console::measure_text_width(&heart),
            61,
            "counted as two by width"
        );
    }
}
