//! Prompts on the terminal (stderr), through dialoguer. Only called when we may prompt.

use anyhow::Result;
use dialoguer::{Input, Password};

pub fn text(prompt: &str) -> Result<String> {
    Ok(Input::<String>::new()
        .with_prompt(prompt)
        .allow_empty(false)
        .interact_text()?)
}

/// A TOTP code, not echoed.
pub fn code(user: &str) -> Result<String> {
    Ok(Password::new()
        .with_prompt(format!("TOTP code for {user}"))
        .interact()?)
}
