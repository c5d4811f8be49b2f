//! Prompts on the terminal (stderr), through dialoguer. Only called when we may prompt.

use anyhow::Result;
use dialoguer::{Input, Password};

/// Free text of at most `limit` characters; asks again until it fits.
pub fn text(prompt: &str, limit: usize) -> Result<String> {
    Ok(Input::<String>::new()
        .with_prompt(prompt)
        .allow_empty(false)
        .validate_with(move |t: &String| -> Result<(), String> {
            let n = t.chars().count();
            if n > limit {
                Err(format!("That is {n} characters; the limit is {limit}."))
            } else {
                Ok(())
            }
        })
        .interact_text()?)
}

/// A TOTP code, not echoed.
pub fn code(user: &str) -> Result<String> {
    Ok(Password::new()
        .with_prompt(format!("TOTP code for {user}"))
        .interact()?)
}
