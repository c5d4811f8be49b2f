//! Scopes: `/` or a path of segments such as `/prod/db`. An assignment at `/prod` covers
//! `/prod` and `/prod/db`, never `/production`.

use crate::error::{Error, Result};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    pub fn root() -> Scope {
        Scope("/".to_string())
    }

    /// Parse and normalise a scope (a trailing slash is dropped).
    pub fn parse(text: &str) -> Result<Scope> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "'{text}' is not a scope: {why}. Write / or a path such as /prod/db."
            ))
        };
        if text == "/" {
            return Ok(Scope::root());
        }
        crate::limits::check("scope", text, crate::limits::SCOPE)?;
        let Some(rest) = text.strip_prefix('/') else {
            return Err(bad("it must start with /"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        for segment in rest.split('/') {
            if segment.is_empty() {
                return Err(bad("it has an empty segment"));
            }
            if segment == "." || segment == ".." {
                return Err(bad("segments cannot be . or .."));
            }
            if !segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(bad("segments use only letters, digits, '.', '_' and '-'"));
            }
        }
        Ok(Scope(format!("/{rest}")))
    }

    /// Whether an assignment at `self` covers `other`.
    pub fn covers(&self, other: &Scope) -> bool {
        self.0 == "/"
            || other.0 == self.0
            || (other.0.starts_with(&self.0) && other.0.as_bytes().get(self.0.len()) == Some(&b'/'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Scope {
        Scope::parse(t).unwrap()
    }

    #[test]
    fn coverage_follows_segments_not_prefixes() {
        assert!(s("/").covers(&s("/prod/db")));
        assert!(s("/prod").covers(&s("/prod")));
        assert!(s("/prod").covers(&s("/prod/db")));
        assert!(!s("/prod").covers(&s("/production")));
        assert!(!s("/prod/db").covers(&s("/prod")));
        assert!(!s("/prod").covers(&s("/")));
    }

    #[test]
    fn scopes_are_validated_and_normalised() {
        assert_eq!(s("/prod/").as_str(), "/prod");
        for bad in ["", "prod", "//", "/a//b", "/a b", "/../etc", "/a/$x"] {
            assert_eq!(Scope::parse(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }
}
